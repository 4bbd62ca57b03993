import pytest

from shared.model_store import ModelStore


@pytest.fixture(scope="session")
def model_store() -> ModelStore:
    from services.gpu_worker.engine.prepare import prepare_all

    store = ModelStore.from_env()
    prepare_all(store)
    return store
