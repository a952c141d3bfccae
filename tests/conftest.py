import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """One models folder for the whole session, so each tiny preset is built once."""
    path = tmp_path_factory.mktemp("models")
    os.environ["RCL_MODELS_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(models_dir) -> str:
    from rcl.tiny_models import resolve_model

    return resolve_model("tiny-1m")


@pytest.fixture()
def repo_env() -> dict:
    """Environment for subprocesses that import rcl from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env
