"""The compose files against the official Compose specification schema, and against the repository.

The schema is the Compose specification's own `compose-spec.json`, as vendored (with its
licence) by the `check-jsonschema` package; validation is done by `jsonschema`.
"""

import copy
import json
import re
from importlib import resources

import jsonschema
import pytest

from shared import env

from .compose_file import COMPOSE_DIR, REPO, active_services, dotenv, environment, interpolate, load, variables_used

COMPOSE_FILES = ("compose.yaml", "compose.gpus.yaml", "nats-node.yaml")
TOKENPOOL_SERVICES = {"router", "autoscaler", "gpu_worker", "gpu_worker_template", "cpu_worker", "gateway"}


@pytest.fixture(scope="module")
def validator():
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    assert schema["title"] == "Compose Specification"
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


@pytest.fixture(scope="module")
def example_env():
    return dotenv(COMPOSE_DIR / ".env.example")


def _errors(validator, tree) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(tree)]


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_file_is_valid_against_the_compose_spec(validator, example_env, name):
    path = COMPOSE_DIR / name
    assert _errors(validator, load(path)) == []
    assert _errors(validator, load(path, example_env)) == []


def test_the_schema_check_catches_a_misspelt_key(validator, example_env):
    tree = copy.deepcopy(load(COMPOSE_DIR / "compose.yaml", example_env))
    tree["services"]["gateway"]["enviroment"] = tree["services"]["gateway"].pop("environment")
    del tree["services"]["gpu_worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"]
    errors = _errors(validator, tree)
    assert any("enviroment" in e for e in errors), errors
    assert any("devices/0: 'capabilities' is a required property" in e for e in errors), errors


def test_env_example_documents_every_variable_the_compose_files_use(example_env):
    used = set()
    for name in COMPOSE_FILES:
        used |= variables_used((COMPOSE_DIR / name).read_text())
    assert sorted(used - set(example_env)) == []
    # COMPOSE_PROFILES is read by Compose itself.
    assert sorted(set(example_env) - used - {"COMPOSE_PROFILES"}) == []


def test_required_passwords_make_compose_refuse_to_start_without_them(example_env):
    text = (COMPOSE_DIR / "compose.yaml").read_text()
    without = {k: v for k, v in example_env.items() if k != "TOKENPOOL_NATS_ROUTER_PASSWORD"}
    with pytest.raises(ValueError, match="TOKENPOOL_NATS_ROUTER_PASSWORD is required: set it in .env"):
        interpolate(text, without)


def test_example_passwords_are_not_read_as_numbers_by_nats_server(example_env):
    passwords = {k: v for k, v in example_env.items() if k.endswith("_PASSWORD")}
    assert len(passwords) == 6
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", v) and not v.isdigit() for v in passwords.values()), passwords


def test_tokenpool_services_only_set_variables_that_shared_env_declares(example_env):
    declared = {value for name, value in vars(env).items() if name.isupper() and isinstance(value, str)}
    tree = load(COMPOSE_DIR / "compose.yaml", example_env)
    for name in TOKENPOOL_SERVICES:
        unknown = set(environment(tree["services"][name])) - declared
        assert unknown == set(), f"{name} sets {unknown}, which no tokenpool service reads (shared/env.py)"


def test_profiles_start_one_kind_of_worker(example_env):
    tree = load(COMPOSE_DIR / "compose.yaml", example_env)
    infra = ["nats", "router", "autoscaler", "gateway", "otel-collector", "jaeger", "prometheus"]
    assert sorted(active_services(tree, {"gpu"})) == sorted(infra + ["gpu_worker"])
    assert sorted(active_services(tree, {"cpu"})) == sorted(infra + ["cpu_worker"])
    assert example_env["COMPOSE_PROFILES"] == "gpu"


def test_each_gpu_service_reserves_a_gpu_of_its_own(example_env):
    reserved = []
    for name in ("compose.yaml", "compose.gpus.yaml"):
        for service, spec in load(COMPOSE_DIR / name, example_env)["services"].items():
            for device in spec.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", []):
                assert device["driver"] == "nvidia" and "gpu" in device["capabilities"], service
                reserved += device["device_ids"]
    assert len(reserved) == len(set(reserved)) == 4, reserved


def test_gpu_services_of_compose_gpus_extend_the_template(example_env):
    services = load(COMPOSE_DIR / "compose.gpus.yaml", example_env)["services"]
    base = load(COMPOSE_DIR / "compose.yaml", example_env)["services"]
    for name, spec in services.items():
        assert spec["extends"] == {"file": "compose.yaml", "service": "gpu_worker_template"}, name
        assert "deploy" not in base[spec["extends"]["service"]], "the template must hold no GPU, or devices add up"


def _stages(dockerfile: str) -> set[str]:
    return set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile, re.M | re.I))


def test_build_targets_exist_in_the_dockerfile_and_its_copies_in_the_repository():
    tree = load(COMPOSE_DIR / "compose.yaml")
    dockerfile = (COMPOSE_DIR / "Dockerfile").read_text()
    stages = _stages(dockerfile)
    for name in TOKENPOOL_SERVICES:
        build = tree["services"][name]["build"]
        assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).resolve() == COMPOSE_DIR / "Dockerfile"
        assert build["target"] in stages, f"{name}: no stage {build['target']!r} in {sorted(stages)}"
    ignore = (COMPOSE_DIR / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    assert "*" in ignore, "the build context (the repository root) must be an allowlist: .venv is large"
    for source in re.findall(r"^COPY\s+(?!--from)(.+)\s+\S+$", dockerfile, re.M):
        for path in source.split():
            assert (REPO / path).exists(), f"Dockerfile copies {path}, which the repository lacks"
            assert path.rstrip("/") in allowed, f"Dockerfile copies {path}, which Dockerfile.dockerignore leaves out"
