"""Every shipped YAML (recipes, fragments, CI files) loads without a repeated mapping key: PyYAML's safe_load keeps
the last of two equal keys silently, so a recipe that pins a key twice documents one value and runs another."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for pattern in ("*.yaml", "*.yml") for p in ROOT.rglob(pattern)
                 if not {".git", ".venv", "runs", "node_modules"} & set(p.relative_to(ROOT).parts))


class DuplicateKeyLoader(yaml.SafeLoader):
    """SafeLoader that raises on a key repeated within one mapping, naming both lines."""


def _mapping(loader: DuplicateKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


DuplicateKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def test_the_loader_catches_a_repeated_key_and_passes_distinct_ones():
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'num_threads'"):
        yaml.load("trainer:\n  num_threads: 0\n  seed: 1\n  num_threads: 2\n", Loader=DuplicateKeyLoader)
    assert yaml.load("a: {b: 1}\nc: {b: 2}\n", Loader=DuplicateKeyLoader) == {"a": {"b": 1}, "c": {"b": 2}}


def test_the_shipped_recipes_are_found():
    names = {p.name for p in SHIPPED}
    assert {"quickstart_grid.yaml", "quickstart_sft.yaml", "ddp.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_yaml_has_no_duplicate_keys(path):
    for _ in yaml.load_all(path.read_text(), Loader=DuplicateKeyLoader):
        pass
