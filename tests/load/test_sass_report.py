"""load/sass_report.py's reading of nvdisasm text (the compile itself needs Triton's ptxas: not here)."""

from __future__ import annotations

from load.sass_report import main_loop, opcode_counts

SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_1:
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0020*/                   HFMA2 R6, R4, R5, R6 ;
        /*0030*/              @!P0 HFMA2 R7, R4, R5, R7 ;
        /*0040*/              @P1 BRA `(.L_x_1) ;
.L_x_2:
        /*0050*/                   STG.E.U16 desc[UR4][R8.64], R6 ;
        /*0060*/                   EXIT ;
        /*0070*/                   BRA `(.L_x_2);
"""


def test_the_main_loop_is_the_backward_branching_block_and_opcodes_drop_modifiers() -> None:
    loop = main_loop(SASS)
    assert loop.splitlines()[0].strip() == ".L_x_1:" and "BRA `(.L_x_1)" in loop.splitlines()[-1]
    assert opcode_counts(loop) == {"LDG": 1, "HFMA2": 2, "BRA": 1}
    assert opcode_counts(SASS)["EXIT"] == 1
    assert main_loop("/*0000*/ EXIT ;") == ""
