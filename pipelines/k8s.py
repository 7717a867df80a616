"""Kubernetes: the pod every launched job runs in, the multi-node training recipe, and their validation.

`K8sLauncher` (the `cluster` deployment) runs a job's command in one pod through Dagster Pipes
(`PipesK8sClient`, the `cluster` extra). `render_training_job` writes the same job as manifests to
`kubectl apply` for N nodes: an Indexed Job (completionMode Indexed, one pod per node, node rank = the
pod's completion index) plus a headless Service, so pod 0 is the c10d rendezvous host at a stable DNS
name (`<job>-0.<job>`). It needs no operator, unlike Kubeflow's PyTorchJob (the training-operator CRDs
and controller must be installed first). `python -m pipelines.k8s render --nodes 2 ... > job.yaml`.

Paths: the image's project root is PROJECT_ROOT (deploy/Dockerfile sets WORKDIR and VISIONFLOW_ROOT to
it), so the Dagster side and every pod compute the same run folders. The shared volume claim holds the
generated folders (SHARED_DIRS), mounted by subPath at PROJECT_ROOT/<dir> over the code and configs the
image carries; deploy/helm/values.yaml mounts it the same way on Dagster's run pods.

`validate_manifest` builds the `kubernetes` client's model classes from a manifest strictly: an unknown
(misspelled) field, a wrong type or a missing required field raises ManifestError.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import dagster as dg

from lightning_modules.contract import JobRequest
from pipelines.launcher import TrainingLauncher, torchrun_command

PROJECT_ROOT = "/opt/visionflow"
SHARED_DIRS = ("data", "prepared", "runs")  # subPaths of the shared claim, mounted under PROJECT_ROOT
RUNS_VOLUME = "runs"
SHM_VOLUME = "dshm"
RDZV_PORT = 29400
USER_ID = 1000  # the image's non-root user (deploy/Dockerfile)
CONTAINER = "visionflow"
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,50}[a-z0-9])?$")  # DNS-1123 label, room for "-<index>"


class ManifestError(ValueError):
    """A manifest that the Kubernetes API would reject: unknown field, wrong type, missing required field."""


class K8sLauncher(TrainingLauncher):
    """One pod per job running the same command with `gpus_per_pod` GPUs (PipesK8sClient, the `cluster`
    extra). Multi-node training: `render_training_job` (an Indexed Job; see the module docstring)."""

    image: str = "visionflow:latest"
    namespace: str = "default"
    gpus_per_pod: int = 0
    cpu: str = "8"
    memory: str = "32Gi"
    shm_size: str = "8Gi"
    shared_volume_claim: str = ""

    @property
    def backend(self) -> str:
        return "k8s"

    def pod_spec(self, env: Mapping[str, str] | None = None) -> dict:
        return k8s_pod_spec(
            gpus=self.gpus_per_pod,
            cpu=self.cpu,
            memory=self.memory,
            shm_size=self.shm_size,
            shared_volume_claim=self.shared_volume_claim or None,
            env=env,
        )

    def _run(self, context, command, env, on_error):
        from dagster_k8s import PipesK8sClient  # lazy: the `cluster` extra

        if not self.shared_volume_claim:  # the pod's run folder must be the one Dagster reads
            raise dg.Failure(
                description="the cluster launcher needs a shared volume claim for the run folders "
                "(VISIONFLOW_RUNS_PVC, a ReadWriteMany PVC); nothing was launched",
                allow_retries=False,
            )
        forwarded = {k: os.environ[k] for k in ("MLFLOW_TRACKING_URI",) if k in os.environ and k not in env}
        try:
            return PipesK8sClient().run(
                context=context,
                image=self.image,
                command=command,
                namespace=self.namespace,
                env={**forwarded, **env},
                base_pod_spec=self.pod_spec(),
            )
        except dg.Failure:
            raise
        except Exception as exc:  # the pod failed (the Pipes execution error class is not public API)
            raise on_error(exc) from exc


def _resources(gpus: int, cpu: str, memory: str) -> dict:
    """Requests equal to limits: Guaranteed QoS (not evicted first), and GPUs must have requests == limits."""
    amounts = {"cpu": cpu, "memory": memory}
    if gpus:
        amounts["nvidia.com/gpu"] = str(gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def shared_volume(claim: str) -> tuple[dict, list[dict]]:
    """The shared claim as a pod volume and its mounts: one subPath per generated folder under PROJECT_ROOT."""
    volume = {"name": RUNS_VOLUME, "persistentVolumeClaim": {"claimName": claim}}
    mounts = [{"name": RUNS_VOLUME, "mountPath": f"{PROJECT_ROOT}/{d}", "subPath": d} for d in SHARED_DIRS]
    return volume, mounts


def k8s_pod_spec(
    *,
    gpus: int,
    cpu: str,
    memory: str,
    shared_volume_claim: str | None,
    shm_size: str = "8Gi",
    env: Mapping[str, str] | None = None,
    image: str | None = None,
    command: Sequence[str] | None = None,
) -> dict:
    """PodSpec (camelCase, as kubectl reads it) of one torchrun pod with `gpus` devices.

    Always: requests and limits, a memory-backed /dev/shm (NCCL and DataLoader workers need more than a
    container's 64 MB; it counts against the memory limit, hence the sizeLimit), the non-root user, and
    VISIONFLOW_ROOT. With a claim: the shared run folders (`shared_volume`)."""
    container: dict[str, Any] = {"name": CONTAINER}
    if image:
        container["image"] = image
    if command:
        container["command"] = list(command)
    container["workingDir"] = PROJECT_ROOT
    container["env"] = [{"name": k, "value": v} for k, v in {"VISIONFLOW_ROOT": PROJECT_ROOT, **(env or {})}.items()]
    container["resources"] = _resources(gpus, cpu, memory)
    container["volumeMounts"] = [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}]
    volumes: list[dict] = [{"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}}]
    if shared_volume_claim:
        volume, mounts = shared_volume(shared_volume_claim)
        volumes.append(volume)
        container["volumeMounts"] += mounts
    return {
        "containers": [container],
        "restartPolicy": "Never",
        "securityContext": {"runAsNonRoot": True, "runAsUser": USER_ID, "runAsGroup": USER_ID, "fsGroup": USER_ID},
        "volumes": volumes,
    }


def rendezvous_endpoint(name: str) -> str:
    """Pod 0 of the Indexed Job `name` behind the headless Service `name`: `<name>-0.<name>:<port>`."""
    return f"{name}-0.{name}:{RDZV_PORT}"


def render_training_job(
    spec: JobRequest,
    *,
    name: str,
    nodes: int,
    image: str,
    shared_volume_claim: str,
    namespace: str = "default",
    gpus_per_node: int = 0,
    nproc_per_node: int = 0,
    cpu: str = "8",
    memory: str = "32Gi",
    shm_size: str = "8Gi",
    python: str = "python",
) -> list[dict]:
    """Manifests for `spec` on `nodes` pods: [Job] for one node (`torchrun --standalone`, the launcher's
    command), [Service, Job] for several (c10d rendezvous on pod 0, node rank = completion index)."""
    if not _NAME.match(name):
        raise ValueError(f"job name {name!r}: lowercase letters, digits and '-', at most 52 characters")
    if nodes < 1:
        raise ValueError(f"nodes={nodes}: at least 1")
    nproc = nproc_per_node or gpus_per_node or 1
    labels = {"app.kubernetes.io/name": "visionflow", "app.kubernetes.io/component": "training", "visionflow/job": name}
    if nodes == 1:
        command = torchrun_command(spec, nproc_per_node=nproc, python=python)
    else:
        # Kubernetes expands $(NODE_RANK) from the container's env: the pod's completion index.
        command = torchrun_command(
            spec,
            nproc_per_node=nproc,
            nnodes=nodes,
            node_rank=0,
            rdzv_endpoint=rendezvous_endpoint(name),
            python=python,
        )
        command[command.index("--node-rank") + 1] = "$(NODE_RANK)"
    pod = k8s_pod_spec(
        gpus=gpus_per_node,
        cpu=cpu,
        memory=memory,
        shm_size=shm_size,
        shared_volume_claim=shared_volume_claim,
        env=spec.env,
        image=image,
        command=command,
    )
    meta = {"name": name, "namespace": namespace, "labels": labels}
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": nodes,
        "parallelism": nodes,
        "backoffLimit": 0,  # torchrun cannot re-admit one restarted node into a running c10d group
        "ttlSecondsAfterFinished": 7 * 24 * 3600,
        "template": {"metadata": {"labels": labels}, "spec": pod},
    }
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}
    if nodes == 1:
        return [job]
    container = pod["containers"][0]
    container["env"].append(
        {
            "name": "NODE_RANK",
            "valueFrom": {
                "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
            },
        }
    )
    container["ports"] = [{"name": "c10d", "containerPort": RDZV_PORT, "protocol": "TCP"}]
    pod["subdomain"] = name  # with the headless Service `name`: pod i is <name>-i.<name>
    # Every pod waits until pod 0's name resolves: torchrun on pod 0 decides it hosts the rendezvous by
    # resolving the endpoint to one of its own addresses, so that record must exist before it starts.
    host = rendezvous_endpoint(name).rsplit(":", 1)[0]
    wait = (
        "import socket, sys, time\n"
        "for _ in range(300):\n"
        "    try:\n"
        f"        socket.getaddrinfo({host!r}, {RDZV_PORT}); sys.exit(0)\n"
        "    except OSError:\n"
        "        time.sleep(1)\n"
        f"sys.exit('{host} did not resolve in 300 s')\n"
    )
    pod["initContainers"] = [
        {
            "name": "wait-for-rendezvous-host",
            "image": image,
            "command": [python, "-c", wait],
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "100m", "memory": "64Mi"}},
        }
    ]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "clusterIP": "None",  # headless: DNS records per pod, no load balancing
            "publishNotReadyAddresses": True,  # resolvable while the pods start, before any readiness
            "selector": {"visionflow/job": name},
            "ports": [{"name": "c10d", "port": RDZV_PORT, "targetPort": RDZV_PORT, "protocol": "TCP"}],
        },
    }
    return [service, job]


_KINDS = {("v1", "Service"): "V1Service", ("v1", "Pod"): "V1Pod", ("batch/v1", "Job"): "V1Job"}
_PRIMITIVES: dict[str, type | tuple[type, ...]] = {"str": str, "int": int, "bool": bool, "float": (int, float)}


def validate_manifest(manifest: Mapping[str, Any]) -> Any:
    """The `kubernetes` client model (V1Job, V1Service, V1Pod) of a manifest; ManifestError if it is not one."""
    key = (str(manifest.get("apiVersion")), str(manifest.get("kind")))
    if key not in _KINDS:
        raise ManifestError(f"apiVersion/kind {key}: expected one of {sorted(_KINDS)}")
    return validate_model(_KINDS[key], manifest)


def validate_model(model: str, data: Any, where: str = "") -> Any:
    """Build the client model class `model` (e.g. "V1PodSpec") from camelCase `data`, strictly.

    The generated classes list their fields (`attribute_map`: python name -> JSON name) and types
    (`openapi_types`); constructing one runs the client-side checks (required fields, enums)."""
    import kubernetes.client  # lazy: the `cluster` extra

    where = where or model
    if model.startswith("list["):
        if not isinstance(data, list):
            raise ManifestError(f"{where}: expected a list, got {type(data).__name__}")
        return [validate_model(model[5:-1], v, f"{where}[{i}]") for i, v in enumerate(data)]
    if model.startswith(("dict(", "dict[")):
        if not isinstance(data, Mapping):
            raise ManifestError(f"{where}: expected a mapping, got {type(data).__name__}")
        value_type = model[5:-1].split(",", 1)[1].strip()
        return {k: validate_model(value_type, v, f"{where}.{k}") for k, v in data.items()}
    if model == "object":  # IntOrString and free-form fields
        return data
    if model in _PRIMITIVES or model == "datetime":
        expected = _PRIMITIVES.get(model, str)
        if isinstance(data, bool) is not (model == "bool") or not isinstance(data, expected):
            raise ManifestError(f"{where}: expected {model}, got {type(data).__name__} {data!r}")
        return data
    cls = getattr(kubernetes.client, model)
    if not isinstance(data, Mapping):
        raise ManifestError(f"{where}: expected a {model} mapping, got {type(data).__name__} {data!r}")
    fields = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ManifestError(f"{where}: {model} has no field {', '.join(map(repr, unknown))}")
    kwargs = {fields[k]: validate_model(cls.openapi_types[fields[k]], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as exc:  # client-side validation: a required field missing, a value outside an enum
        raise ManifestError(f"{where}: {exc}") from None


def _in_root(path: str) -> Path:
    """A path as the pods see it: relative ones are under PROJECT_ROOT."""
    return Path(path) if PurePosixPath(path).is_absolute() else Path(PROJECT_ROOT) / path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.k8s", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="print the Job (and Service) manifests of one training job as YAML")
    r.add_argument("--nodes", type=int, default=1)
    r.add_argument("--gpus-per-node", type=int, default=0)
    r.add_argument("--nproc-per-node", type=int, default=0, help="ranks per node (default: GPUs, else 1)")
    r.add_argument("--config", action="append", required=True, help="job YAML, relative to the project root")
    r.add_argument("--data", required=True, help="prepared set, relative to the project root")
    r.add_argument("--run-dir", required=True, help="run folder, relative to the project root (under runs/)")
    r.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    r.add_argument("--name", default="visionflow-train")
    r.add_argument("--namespace", default="default")
    r.add_argument("--image", default=os.environ.get("VISIONFLOW_IMAGE", "visionflow:latest"))
    r.add_argument("--runs-pvc", default=os.environ.get("VISIONFLOW_RUNS_PVC", "visionflow-runs"))
    r.add_argument("--cpu", default="8")
    r.add_argument("--memory", default="32Gi")
    r.add_argument("--shm-size", default="8Gi")
    args = parser.parse_args(argv)
    import yaml  # lazy: only the render command writes YAML

    spec = JobRequest(
        configs=tuple(str(_in_root(c)) for c in args.config),
        data=_in_root(args.data),
        run_dir=_in_root(args.run_dir),
        overrides=tuple(args.overrides),
    )
    manifests = render_training_job(
        spec,
        name=args.name,
        nodes=args.nodes,
        image=args.image,
        shared_volume_claim=args.runs_pvc,
        namespace=args.namespace,
        gpus_per_node=args.gpus_per_node,
        nproc_per_node=args.nproc_per_node,
        cpu=args.cpu,
        memory=args.memory,
        shm_size=args.shm_size,
    )
    try:
        for manifest in manifests:
            validate_manifest(manifest)
    except ModuleNotFoundError:
        print("not validated: the kubernetes client is missing (pip install -e '.[cluster]')", file=sys.stderr)
    sys.stdout.write(yaml.safe_dump_all(manifests, sort_keys=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
