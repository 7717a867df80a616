"""Kubernetes: the launcher's pod, the multi-node Indexed Job recipe, the image and the Helm values.

No cluster here (no kube-apiserver): every manifest is built into the `kubernetes` client's model classes
(`pipelines.k8s.validate_model`, strict about unknown fields and types), the pod PipesK8sClient would
submit is built by dagster-k8s itself, and the Helm values are validated against the chart's schema."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import jsonschema
import kubernetes.client
import pytest
import yaml
from dagster_k8s.pipes import build_pod_body

from lightning_modules.contract import JobRequest
from pipelines.k8s import (
    PROJECT_ROOT,
    RDZV_PORT,
    SHARED_DIRS,
    K8sLauncher,
    ManifestError,
    k8s_pod_spec,
    main,
    render_training_job,
    shared_volume,
    validate_manifest,
    validate_model,
)
from pipelines.launcher import torchrun_command
from pipelines.resources import resources_for

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def _spec() -> JobRequest:
    root = Path(PROJECT_ROOT)
    return JobRequest(
        configs=(str(root / "configs/pretrain-cpu.yaml"),),
        data=root / "prepared/imagenet",
        run_dir=root / "runs/manual/pretrain",
        overrides=("trainer.max_epochs=30",),
    )


def _render(nodes: int, **kw) -> list[dict]:
    args = {"name": "vf-train", "nodes": nodes, "image": "reg/visionflow:1", "shared_volume_claim": "runs-pvc"}
    return render_training_job(_spec(), **{**args, "gpus_per_node": 4, **kw})


def _job(manifests: list[dict]) -> dict:
    return next(m for m in manifests if m["kind"] == "Job")


def _container(pod: dict) -> dict:
    return pod["containers"][0]


def _mounts(container: dict) -> dict[str, dict]:
    return {m["mountPath"]: m for m in container["volumeMounts"]}


def test_the_launchers_pod_has_requests_limits_shm_and_the_shared_run_folders() -> None:
    spec = k8s_pod_spec(gpus=4, cpu="16", memory="64Gi", shm_size="16Gi", shared_volume_claim="runs-pvc")
    model = validate_model("V1PodSpec", spec)
    assert kubernetes.client.ApiClient().sanitize_for_serialization(model) == spec  # nothing dropped
    resources = _container(spec)["resources"]
    assert resources["requests"] == resources["limits"] == {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "4"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = _mounts(_container(spec))
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert volumes["runs"]["persistentVolumeClaim"] == {"claimName": "runs-pvc"}
    for folder in SHARED_DIRS:  # the folders Dagster computes (project root = the image's) on the claim
        assert mounts[f"{PROJECT_ROOT}/{folder}"] == {
            "name": "runs",
            "mountPath": f"{PROJECT_ROOT}/{folder}",
            "subPath": folder,
        }
    assert {"name": "VISIONFLOW_ROOT", "value": PROJECT_ROOT} in _container(spec)["env"]
    assert spec["securityContext"]["runAsNonRoot"] is True


def test_shm_is_mounted_even_without_a_claim_and_cpu_pods_ask_for_no_gpu() -> None:
    spec = k8s_pod_spec(gpus=0, cpu="2", memory="4Gi", shared_volume_claim=None)
    validate_model("V1PodSpec", spec)
    assert "/dev/shm" in _mounts(_container(spec)) and [v["name"] for v in spec["volumes"]] == ["dshm"]
    assert _container(spec)["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}


def test_dagster_k8s_builds_the_launchers_pod_from_our_spec() -> None:
    """What PipesK8sClient.run submits: dagster-k8s's own pod builder on K8sLauncher's spec."""
    launcher = K8sLauncher(image="reg/visionflow:1", gpus_per_pod=2, shared_volume_claim="runs-pvc")
    cmd = torchrun_command(_spec(), nproc_per_node=2, python=launcher.python)
    pod = build_pod_body("p", launcher.image, cmd, {"VISIONFLOW_REPORTER": "pipes"}, None, launcher.pod_spec())
    assert isinstance(pod, kubernetes.client.V1Pod)
    container = pod.spec.containers[0]
    assert container.image == "reg/visionflow:1" and container.command == cmd
    assert container.resources.requests["nvidia.com/gpu"] == "2"
    assert {m.mount_path for m in container.volume_mounts} >= {"/dev/shm", f"{PROJECT_ROOT}/runs"}
    assert {e.name for e in container.env} >= {"VISIONFLOW_ROOT", "VISIONFLOW_REPORTER"}


def test_one_node_runs_the_launchers_standalone_command() -> None:
    manifests = _render(1)
    assert [m["kind"] for m in manifests] == ["Job"]
    for manifest in manifests:
        validate_manifest(manifest)
    job = _job(manifests)
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 1
    command = _container(job["spec"]["template"]["spec"])["command"]
    assert command == torchrun_command(_spec(), nproc_per_node=4, python=K8sLauncher().python)
    assert "--standalone" in command


def test_two_nodes_rendezvous_on_pod_0_with_the_completion_index_as_node_rank() -> None:
    manifests = _render(2)
    assert [m["kind"] for m in manifests] == ["Service", "Job"]
    models = [validate_manifest(m) for m in manifests]
    assert isinstance(models[1], kubernetes.client.V1Job)
    api = kubernetes.client.ApiClient()
    assert [api.sanitize_for_serialization(m) for m in models] == manifests  # nothing dropped or renamed
    service, job = manifests
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["ports"][0]["port"] == RDZV_PORT
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] == "vf-train"
    assert service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    command = _container(pod)["command"]
    expected = torchrun_command(
        _spec(),
        nproc_per_node=4,
        nnodes=2,
        node_rank=0,
        rdzv_endpoint=f"vf-train-0.vf-train:{RDZV_PORT}",
        python="python",
    )
    assert command == [
        *expected[: expected.index("--node-rank") + 1],
        "$(NODE_RANK)",
        *expected[expected.index("--node-rank") + 2 :],
    ]
    rank = next(e for e in _container(pod)["env"] if e["name"] == "NODE_RANK")
    assert (
        rank["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    assert "vf-train-0.vf-train" in pod["initContainers"][0]["command"][-1]
    # the same resources, shm and shared run folders as the launcher's pod
    assert _container(pod)["resources"]["requests"]["nvidia.com/gpu"] == "4"
    assert {"/dev/shm", f"{PROJECT_ROOT}/runs"} <= set(_mounts(_container(pod)))
    run_dir = command[command.index("--out") + 1]
    assert run_dir.startswith(f"{PROJECT_ROOT}/runs/")


@pytest.mark.parametrize(
    ("where", "bad", "message"),
    [
        ("container", {"volumeMount": []}, "has no field 'volumeMount'"),  # misspelled field
        ("container", {"resources": {"limits": {"cpu": 8}}}, "expected str"),  # a quantity must be a string
        ("job", {"completions": "2"}, "expected int"),
    ],
)
def test_a_misspelled_field_or_a_wrong_type_is_rejected(where, bad, message) -> None:
    job = _job(_render(2))
    target = _container(job["spec"]["template"]["spec"]) if where == "container" else job["spec"]
    target.update(bad)
    with pytest.raises(ManifestError, match=re.escape(message)):
        validate_manifest(job)


def test_a_missing_required_field_is_rejected() -> None:
    job = _job(_render(2))
    del _container(job["spec"]["template"]["spec"])["name"]
    with pytest.raises(ManifestError, match="`name`, must not be `None`"):
        validate_manifest(job)


def test_the_render_cli_prints_valid_yaml(capsys) -> None:
    main(
        ["render", "--nodes", "2", "--gpus-per-node", "8", "--config", "configs/pretrain-cpu.yaml"]
        + ["--data", "prepared/imagenet", "--run-dir", "runs/manual/x", "--name", "vf", "--image", "reg/v:1"]
    )
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["kind"] for d in docs] == ["Service", "Job"] and all(validate_manifest(d) for d in docs)
    command = _container(_job(docs)["spec"]["template"]["spec"])["command"]
    assert command[command.index("--data") + 1] == f"{PROJECT_ROOT}/prepared/imagenet"


def test_the_cluster_resource_set_reads_the_pod_size(monkeypatch) -> None:
    for key, value in {"VISIONFLOW_GPUS_PER_POD": "0", "VISIONFLOW_NPROC": "3", "VISIONFLOW_SHM_SIZE": "2Gi"}.items():
        monkeypatch.setenv(key, value)
    launcher = resources_for("cluster")["launcher"]
    assert isinstance(launcher, K8sLauncher) and launcher.nproc_per_node == 3 and launcher.shm_size == "2Gi"


# --- the image ---------------------------------------------------------------------------------------


def test_the_dockerfile_declares_the_variants_and_matches_the_pins() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    assert {"BASE_IMAGE", "TORCH_INDEX_URL", "TORCH_VERSION", "TORCHVISION_VERSION", "EXTRAS"} <= set(args)
    makefile = (REPO / "Makefile").read_text()
    assert (
        f'"torch=={args["TORCH_VERSION"]}"' in makefile and f'"torchvision=={args["TORCHVISION_VERSION"]}"' in makefile
    )
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert f"<={args['TORCH_VERSION']}" in next(d for d in project["dependencies"] if d.startswith("torch>"))
    python = re.match(r"python:(\d+\.\d+)", args["BASE_IMAGE"])
    assert python and f">={python.group(1)}" in project["requires-python"]
    assert set(args["EXTRAS"].split(",")) == {"cluster", "postgres"} <= set(project["optional-dependencies"])
    assert "whl/cpu" in args["TORCH_INDEX_URL"]
    assert re.search(rf"^WORKDIR {PROJECT_ROOT}$", text, re.M) and f"VISIONFLOW_ROOT={PROJECT_ROOT}" in text
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and user[-1].split(":")[0] not in {"0", "root"}
    assert not re.search(r"^(CMD|ENTRYPOINT)\b", text, re.M)  # the launcher and the chart give the command


# --- the Helm values -----------------------------------------------------------------------------------


def _values() -> dict:
    return yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())


def _schema() -> dict:
    return json.loads((REPO / "tests" / "data" / "dagster_helm_values.schema.json").read_text())


def test_the_helm_values_validate_against_the_charts_schema() -> None:
    values, schema = _values(), _schema()
    jsonschema.validate(values, schema)
    assert set(values) <= set(schema["properties"])  # the chart ignores unknown top-level keys silently
    # The Kubernetes objects inside, against the client's models.
    deployment = values["dagster-user-deployments"]["deployments"][0]
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    validate_model("list[V1EnvVar]", deployment["env"])
    validate_model("V1ResourceRequirements", deployment["resources"])
    validate_model("list[V1Volume]", launcher["volumes"])
    validate_model("list[V1VolumeMount]", launcher["volumeMounts"])
    validate_model("V1ResourceRequirements", launcher["resources"])
    validate_model("V1SecurityContext", launcher["securityContext"])


def test_a_wrong_helm_value_fails_the_schema() -> None:
    values = _values()
    values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]["maxConcurentRuns"] = 4
    with pytest.raises(jsonschema.ValidationError, match="maxConcurentRuns"):
        jsonschema.validate(values, _schema())
    values = _values()
    values["concurrency"]["pools"]["defaultLimit"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(values, _schema())


def test_the_helm_values_name_the_run_launcher_postgres_the_train_pool_and_the_shared_folders() -> None:
    values = _values()
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is True
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] and coordinator["type"] == "QueuedRunCoordinator"
    # every training asset is in pool `train`: the default limit is its limit
    assert values["concurrency"] == {"enabled": True, "pools": {"defaultLimit": 1}}
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    env = {e["name"]: e["value"] for e in values["dagster-user-deployments"]["deployments"][0]["env"]}
    volume, mounts = shared_volume(env["VISIONFLOW_RUNS_PVC"])
    assert launcher["volumes"] == [volume] and launcher["volumeMounts"] == mounts  # where the training pods mount it
    assert env["VISIONFLOW_DEPLOYMENT"] == "cluster"
    image = values["dagster-user-deployments"]["deployments"][0]["image"]
    assert env["VISIONFLOW_IMAGE"] == f"{image['repository']}:{image['tag']}"
