"""The Kubernetes deployment: one pod per job running the launcher's torchrun command (PipesK8sClient,
the `cluster` extra), and the pod spec it runs in."""

from __future__ import annotations

from pipelines.launcher import TrainingLauncher


class K8sLauncher(TrainingLauncher):
    """One pod per job running the same command with `gpus_per_pod` GPUs (PipesK8sClient, the `cluster`
    extra). Multi-node: one pod per node with --nnodes/--node-rank and a c10d rendezvous endpoint (see
    README); run folders must sit on a shared volume."""

    image: str = "visionflow:latest"
    namespace: str = "default"
    gpus_per_pod: int = 0
    cpu: str = "8"
    memory: str = "32Gi"
    shared_volume_claim: str = ""

    @property
    def backend(self) -> str:
        return "k8s"

    def _run(self, context, command, env, on_error):
        from dagster_k8s import PipesK8sClient  # lazy: the `cluster` extra

        pod = k8s_pod_spec(
            gpus=self.gpus_per_pod,
            cpu=self.cpu,
            memory=self.memory,
            shared_volume_claim=self.shared_volume_claim or None,
        )
        return PipesK8sClient().run(
            context=context, image=self.image, command=command, namespace=self.namespace, env=env, base_pod_spec=pod
        )


def k8s_pod_spec(*, gpus: int, cpu: str, memory: str, shared_volume_claim: str | None) -> dict:
    """Pod spec for one torchrun pod with `gpus` devices; the run folder sits on a shared volume."""
    resources = {"limits": {"cpu": cpu, "memory": memory}}
    if gpus:
        resources["limits"]["nvidia.com/gpu"] = str(gpus)
    container: dict = {"resources": resources}
    spec: dict = {"containers": [container], "restart_policy": "Never"}
    if shared_volume_claim:
        container["volume_mounts"] = [{"name": "runs", "mount_path": "/runs"}]
        # torch's NCCL needs more shared memory than a container's default 64 MB.
        container["volume_mounts"].append({"name": "dshm", "mount_path": "/dev/shm"})
        spec["volumes"] = [
            {"name": "runs", "persistent_volume_claim": {"claim_name": shared_volume_claim}},
            {"name": "dshm", "empty_dir": {"medium": "Memory"}},
        ]
    return spec
