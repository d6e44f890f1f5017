"""The project's top-level packages own their import names: none is also the import name of an
installed distribution (transformers 5.25 depends on Hugging Face's `kernels`, which a package of
ours named `kernels` shadowed from the repository root, so `import transformers.modeling_utils`
failed)."""

import importlib.metadata
import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _our_packages() -> set[str]:
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    return {pattern.rstrip("*") for pattern in found["include"]}


def test_no_installed_distribution_shares_a_top_level_name() -> None:
    ours = _our_packages()
    assert ours and all((ROOT / name / "__init__.py").is_file() for name in ours), ours
    owners = importlib.metadata.packages_distributions()
    clashes = {name: dists for name in ours if (dists := [d for d in owners.get(name, []) if d != "genfleet"])}
    assert not clashes, f"import names also installed by other distributions: {clashes}"


def test_transformers_model_code_imports() -> None:
    # What the real-model tests and the GGUF conversion import first.
    import transformers.modeling_utils  # noqa: F401
