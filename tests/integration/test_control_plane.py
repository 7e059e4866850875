"""The local control plane behaves like the Kubernetes the operator will run on.

Issue 4's "done when", against real etcd/apiserver/controller-manager/scheduler with
simulated GPU nodes (localcluster): CEL transition rules, GPU-aware scheduling and
exhaustion, in-pod API access under RBAC, Job completion and podFailurePolicy, garbage
collection through owner references, and pod deletion killing the local process.
"""

from __future__ import annotations

import json
import os
import textwrap
import uuid

import pytest
from kubernetes import client

from localcluster.nodeagent import GPU_PRODUCT_LABEL, GPU_RESOURCE, HOST_BLOCK_LABEL, pod_pid
from localcluster.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


# --- builders ------------------------------------------------------------------------------


def make_job(
    name: str,
    command: list[str],
    *,
    node_selector: dict | None = None,
    gpus: int = 0,
    service_account: str | None = None,
    owner: dict | None = None,
    parallelism: int = 1,
    pod_failure_policy: dict | None = None,
    env: list[dict] | None = None,
) -> dict:
    container: dict = {
        "name": "main",
        "image": "ignored.local/ladder:dev",
        "command": command,
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            *(env or []),
        ],
    }
    if gpus:
        container["resources"] = {"limits": {GPU_RESOURCE: str(gpus)}}
    pod_spec: dict = {"restartPolicy": "Never", "containers": [container], "terminationGracePeriodSeconds": 5}
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if service_account:
        pod_spec["serviceAccountName"] = service_account
    job: dict = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "parallelism": parallelism,
            "completions": parallelism,
            "template": {"spec": pod_spec},
        },
    }
    if owner:
        job["metadata"]["ownerReferences"] = [owner]
    if pod_failure_policy:
        job["spec"]["podFailurePolicy"] = pod_failure_policy
    return job


def owner_ref(obj, kind: str, api_version: str = "v1") -> dict:
    return {"apiVersion": api_version, "kind": kind, "name": obj.metadata.name, "uid": obj.metadata.uid}


# --- helpers -------------------------------------------------------------------------------


@pytest.fixture
def api(local_cluster):
    return local_cluster.api_client()


def job_pods(core: client.CoreV1Api, ns: str, job: str) -> list:
    return core.list_namespaced_pod(ns, label_selector=f"job-name={job}").items


def job_condition(batch: client.BatchV1Api, ns: str, job: str) -> tuple[str, str] | None:
    """(type, reason) of the Job's terminal condition (Complete or Failed), else None."""
    for c in batch.read_namespaced_job(job, ns).status.conditions or []:
        if c.type in ("Complete", "Failed") and c.status == "True":
            return c.type, c.reason or ""
    return None


def pod_summary(core: client.CoreV1Api, ns: str) -> list:
    return [
        (
            p.metadata.name,
            p.spec.node_name,
            p.status.phase,
            [(c.type, c.status, c.reason) for c in p.status.conditions or []],
        )
        for p in core.list_namespaced_pod(ns).items
    ]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


# --- CRD with a CEL transition rule ----------------------------------------------------------

CEL_GROUP = "ctltest.localcluster.dev"


@pytest.fixture(scope="module")
def gadget_crd(local_cluster):
    ext = client.ApiextensionsV1Api(local_cluster.api_client())
    name = f"gadgets.{CEL_GROUP}"
    ext.create_custom_resource_definition(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": name},
            "spec": {
                "group": CEL_GROUP,
                "scope": "Namespaced",
                "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "properties": {
                                    "spec": {
                                        "type": "object",
                                        "properties": {
                                            "frozen": {
                                                "type": "string",
                                                "x-kubernetes-validations": [
                                                    {"rule": "self == oldSelf", "message": "frozen is immutable"}
                                                ],
                                            },
                                            "free": {"type": "string"},
                                        },
                                    }
                                },
                            }
                        },
                    }
                ],
            },
        }
    )

    def established() -> bool:
        crd = ext.read_custom_resource_definition(name)
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

    wait_for(established, timeout=30, what=f"CRD {name} Established")
    yield name
    ext.delete_custom_resource_definition(name)


CEL_CASES = {
    "unchanged frozen field is accepted": ({"frozen": "v1", "free": "b"}, None),
    "changed frozen field is rejected by self == oldSelf": ({"frozen": "v2"}, "frozen is immutable"),
}


@pytest.mark.parametrize("change,rejection", CEL_CASES.values(), ids=CEL_CASES.keys())
def test_cel_transition_rule(gadget_crd, api, namespace, change, rejection):
    custom = client.CustomObjectsApi(api)
    args = (CEL_GROUP, "v1", namespace, "gadgets")
    body = {
        "apiVersion": f"{CEL_GROUP}/v1",
        "kind": "Gadget",
        "metadata": {"name": "g"},
        "spec": {"frozen": "v1", "free": "a"},
    }
    # A just-established CRD's endpoint can 404 for a moment.
    wait_for(lambda: custom.create_namespaced_custom_object(*args, body), timeout=20, what="create Gadget")

    if rejection is None:
        updated = custom.patch_namespaced_custom_object(*args, "g", {"spec": change})
        assert updated["spec"] == {"frozen": "v1", "free": "b"}
        return
    with pytest.raises(client.ApiException) as err:
        custom.patch_namespaced_custom_object(*args, "g", {"spec": change})
    assert err.value.status == 422, err.value.body
    assert rejection in err.value.body
    assert custom.get_namespaced_custom_object(*args, "g")["spec"]["frozen"] == "v1"


# --- scheduling on simulated GPU nodes -------------------------------------------------------

# The pod reports where it ran through the termination log, using a fieldRef env var and
# kubelet-style $(VAR) expansion in its args.
REPORT_NODE = ["sh", "-c", 'echo "ran on $(NODE_NAME)" > "$LADDER_TERMINATION_LOG"']

PLACEMENT_CASES = {
    "a100 host block": ({HOST_BLOCK_LABEL: "a100"}, 4, {"a100-0", "a100-1"}),
    "l40s host block": ({HOST_BLOCK_LABEL: "l40s"}, 2, {"l40s-0"}),
    "gpu product label": ({GPU_PRODUCT_LABEL: "NVIDIA-L40S"}, 1, {"l40s-0"}),
}


@pytest.mark.parametrize("selector,gpus,allowed", PLACEMENT_CASES.values(), ids=PLACEMENT_CASES.keys())
def test_gpu_job_lands_on_matching_node(api, namespace, selector, gpus, allowed):
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    batch.create_namespaced_job(namespace, make_job("place", REPORT_NODE, node_selector=selector, gpus=gpus))

    assert wait_for(
        lambda: job_condition(batch, namespace, "place"),
        timeout=60,
        what="Job place finished",
        describe=lambda: pod_summary(core, namespace),
    ) == ("Complete", "CompletionsReached")
    [pod] = job_pods(core, namespace, "place")
    assert pod.spec.node_name in allowed
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    assert terminated.message.strip() == f"ran on {pod.spec.node_name}"


def test_job_stays_pending_while_gpus_are_exhausted(local_cluster, api, namespace):
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    a100 = {HOST_BLOCK_LABEL: "a100"}
    # Two pods take all 4 GPUs of both a100 nodes.
    batch.create_namespaced_job(
        namespace, make_job("hold", ["sleep", "300"], node_selector=a100, gpus=4, parallelism=2)
    )

    def both_running():
        running = [p for p in job_pods(core, namespace, "hold") if p.status.phase == "Running" and pod_pid(p)]
        return running if len(running) == 2 else None

    holders = wait_for(
        both_running, timeout=60, what="both holder pods Running", describe=lambda: pod_summary(core, namespace)
    )
    assert {p.spec.node_name for p in holders} == {"a100-0", "a100-1"}
    holder_pids = [pod_pid(p) for p in holders]
    assert all(pid_alive(pid) for pid in holder_pids)

    batch.create_namespaced_job(namespace, make_job("waiter", REPORT_NODE, node_selector=a100, gpus=1))

    def unschedulable():
        for p in job_pods(core, namespace, "waiter"):
            for c in p.status.conditions or []:
                if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
                    return p, c
        return None

    pod, cond = wait_for(
        unschedulable, timeout=60, what="waiter pod Unschedulable", describe=lambda: pod_summary(core, namespace)
    )
    assert f"Insufficient {GPU_RESOURCE}" in cond.message
    assert pod.status.phase == "Pending" and not pod.spec.node_name

    # Freeing the GPUs (deleting the holders kills their processes) lets the waiter run.
    batch.delete_namespaced_job("hold", namespace, propagation_policy="Foreground")
    wait_for(
        lambda: not job_pods(core, namespace, "hold"),
        timeout=60,
        what="holder pods deleted",
        describe=lambda: pod_summary(core, namespace),
    )
    assert not any(pid_alive(pid) for pid in holder_pids)
    assert wait_for(
        lambda: job_condition(batch, namespace, "waiter"),
        timeout=60,
        what="Job waiter finished",
        describe=lambda: pod_summary(core, namespace),
    ) == ("Complete", "CompletionsReached")
    [pod] = job_pods(core, namespace, "waiter")
    assert pod.spec.node_name in {"a100-0", "a100-1"}


# --- in-pod API access under RBAC, Job completion, garbage collection ------------------------

ANNOTATE_OWN_POD = textwrap.dedent("""
    import json, os
    from kubernetes import client, config
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    core = client.CoreV1Api()
    name, ns = os.environ["POD_NAME"], os.environ["POD_NAMESPACE"]
    core.patch_namespaced_pod(name, ns, {"metadata": {"annotations": {"localcluster.dev/patched-by": name}}})
    try:
        core.list_namespaced_pod(ns)
        list_status = 200
    except client.ApiException as exc:
        list_status = exc.status
    with open(os.environ["LADDER_TERMINATION_LOG"], "w") as f:
        json.dump({"list_status": list_status, "cwd": os.getcwd(), "home": os.environ["HOME"]}, f)
    print("patched", name)
""")


def test_pod_patches_itself_job_completes_and_owner_deletion_collects(local_cluster, api, namespace):
    core, batch, rbac = client.CoreV1Api(api), client.BatchV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "annotator"}})
    rbac.create_namespaced_role(
        namespace,
        {"metadata": {"name": "patch-pods"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}]},
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "annotator-patch-pods"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "patch-pods"},
            "subjects": [{"kind": "ServiceAccount", "name": "annotator", "namespace": namespace}],
        },
    )
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": f"owner-{uuid.uuid4().hex[:6]}"}})

    batch.create_namespaced_job(
        namespace,
        make_job(
            "annotate",
            ["python", "-c", ANNOTATE_OWN_POD],
            node_selector={HOST_BLOCK_LABEL: "a100"},
            gpus=1,
            service_account="annotator",
            owner=owner_ref(owner, "ConfigMap"),
        ),
    )

    assert wait_for(
        lambda: job_condition(batch, namespace, "annotate"),
        timeout=90,
        what="Job annotate finished",
        describe=lambda: (
            pod_summary(core, namespace),
            [local_cluster.pod_log(namespace, p.metadata.name) for p in job_pods(core, namespace, "annotate")],
        ),
    ) == ("Complete", "CompletionsReached")
    [pod] = job_pods(core, namespace, "annotate")
    log_text = local_cluster.pod_log(namespace, pod.metadata.name)
    assert f"patched {pod.metadata.name}" in log_text, log_text
    assert pod.metadata.annotations["localcluster.dev/patched-by"] == pod.metadata.name
    report = json.loads(pod.status.container_statuses[0].state.terminated.message)
    assert report["list_status"] == 403, "the Role grants patch only; list must be forbidden"
    assert (
        report["cwd"]
        == report["home"]
        == str(local_cluster.agent.scratch_dir(namespace, pod.metadata.name, pod.metadata.uid))
    )

    core.delete_namespaced_config_map(owner.metadata.name, namespace, propagation_policy="Background")

    def collected() -> bool:
        try:
            batch.read_namespaced_job("annotate", namespace)
            return False
        except client.ApiException as exc:
            return exc.status == 404 and not job_pods(core, namespace, "annotate")

    wait_for(
        collected,
        timeout=60,
        what="garbage collection of Job annotate and its pod",
        describe=lambda: pod_summary(core, namespace),
    )


# --- exit codes and podFailurePolicy ---------------------------------------------------------

FAIL_ON_42 = {
    "rules": [{"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}}]
}

EXIT_CASES = {  # the process also prints, to check FallbackToLogsOnError on failures
    "exit 0 completes the Job": (0, ("Complete", "CompletionsReached")),
    "exit 42 fails the Job through podFailurePolicy": (42, ("Failed", "PodFailurePolicy")),
    "exit 3 exhausts backoffLimit 0": (3, ("Failed", "BackoffLimitExceeded")),
}


@pytest.mark.parametrize("code,outcome", EXIT_CASES.values(), ids=EXIT_CASES.keys())
def test_exit_code_reaches_job_controller(api, namespace, code, outcome):
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    job = make_job("exit", ["sh", "-c", f"echo about to exit {code}; exit {code}"], pod_failure_policy=FAIL_ON_42)
    job["spec"]["template"]["spec"]["containers"][0]["terminationMessagePolicy"] = "FallbackToLogsOnError"
    batch.create_namespaced_job(namespace, job)
    assert (
        wait_for(
            lambda: job_condition(batch, namespace, "exit"),
            timeout=60,
            what="Job exit finished",
            describe=lambda: pod_summary(core, namespace),
        )
        == outcome
    )
    [pod] = job_pods(core, namespace, "exit")
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == code
    assert terminated.reason == ("Completed" if code == 0 else "Error")
    assert terminated.message == (None if code == 0 else f"about to exit {code}")


# --- pod deletion ---------------------------------------------------------------------------


def test_deleting_a_running_pod_kills_its_process_and_reports_it_failed(api, namespace):
    core = client.CoreV1Api(api)
    # A finalizer of our own keeps the pod readable after the agent's final delete.
    hold = "localcluster.dev/test-hold"
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "sleeper", "finalizers": [hold]},
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 5,
                "containers": [{"name": "main", "image": "ignored", "command": ["sleep", "300"]}],
            },
        },
    )
    pod = wait_for(
        lambda: (p := core.read_namespaced_pod("sleeper", namespace)).status.phase == "Running" and p,
        timeout=60,
        what="sleeper Running",
        describe=lambda: pod_summary(core, namespace),
    )
    pid = pod_pid(pod)
    assert pid and pid_alive(pid)

    core.delete_namespaced_pod("sleeper", namespace)

    pod = wait_for(
        lambda: (p := core.read_namespaced_pod("sleeper", namespace)).status.phase == "Failed" and p,
        timeout=30,
        what="sleeper reported Failed",
        describe=lambda: pod_summary(core, namespace),
    )
    assert pod.status.container_statuses[0].state.terminated.exit_code == 143  # SIGTERM, as from a kubelet
    assert pod.metadata.deletion_grace_period_seconds == 0, "the agent finishes the deletion"
    assert not pid_alive(pid)
    core.patch_namespaced_pod("sleeper", namespace, {"metadata": {"finalizers": None}})

    def gone() -> bool:
        try:
            core.read_namespaced_pod("sleeper", namespace)
            return False
        except client.ApiException as exc:
            return exc.status == 404

    wait_for(gone, timeout=30, what="sleeper deleted")


# --- what the process sees, restarts, and pods the agent refuses ------------------------------

PRINT_ENV = textwrap.dedent("""
    import json, os, sys
    keys = ["GREETING", "FROM_CM", "FROM_SECRET", "PFX_color", "ESCAPED", "SA", "KUBERNETES_SERVICE_HOST"]
    json.dump({"env": {k: os.environ.get(k) for k in keys}, "argv": sys.argv[1:]},
              open(os.environ["LADDER_TERMINATION_LOG"], "w"))
""")


def test_pod_env_follows_the_kubelet_rules(api, namespace):
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "cfg"}, "data": {"mode": "fast", "color": "red"}}
    )
    core.create_namespaced_secret(namespace, {"metadata": {"name": "sec"}, "stringData": {"key": "s3cret"}})
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "env"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "main",
                        "image": "ignored",
                        "command": ["python", "-c", PRINT_ENV, "--pod=$(POD)", "$$(POD)"],
                        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "PFX_"}],
                        "env": [
                            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "GREETING", "value": "hello $(POD) on $(UNDEFINED)"},
                            {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
                            {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "key"}}},
                            {"name": "ESCAPED", "value": "$$(POD)"},
                            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                        ],
                    }
                ],
            },
        },
    )
    pod = wait_for(
        lambda: (p := core.read_namespaced_pod("env", namespace)).status.phase in ("Succeeded", "Failed") and p,
        timeout=60,
        what="pod env finished",
        describe=lambda: pod_summary(core, namespace),
    )
    assert pod.status.phase == "Succeeded", pod.status
    seen = json.loads(pod.status.container_statuses[0].state.terminated.message)
    assert seen["env"] == {
        "GREETING": "hello env on $(UNDEFINED)",
        "FROM_CM": "fast",
        "FROM_SECRET": "s3cret",
        "PFX_color": "red",
        "ESCAPED": "$(POD)",
        "SA": "default",
        "KUBERNETES_SERVICE_HOST": None,
    }
    assert seen["argv"] == ["--pod=env", "$(POD)"]


def test_on_failure_restarts_the_process_in_place(api, namespace):
    core = client.CoreV1Api(api)
    # The scratch directory survives restarts, as a container's writable layer would.
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "flaky"},
            "spec": {
                "restartPolicy": "OnFailure",
                "containers": [
                    {
                        "name": "main",
                        "image": "ignored",
                        "command": ["sh", "-c", "if [ -f tried ]; then exit 0; fi; touch tried; exit 7"],
                    }
                ],
            },
        },
    )
    pod = wait_for(
        lambda: (p := core.read_namespaced_pod("flaky", namespace)).status.phase == "Succeeded" and p,
        timeout=60,
        what="pod flaky Succeeded",
        describe=lambda: pod_summary(core, namespace),
    )
    status = pod.status.container_statuses[0]
    assert status.restart_count == 1
    assert status.last_state.terminated.exit_code == 7


REFUSED_CASES = {
    "no command (images are ignored)": ([{"name": "main", "image": "python:3.11"}], "has no command"),
    "two containers": (
        [{"name": "a", "image": "x", "command": ["true"]}, {"name": "b", "image": "x", "command": ["true"]}],
        "exactly one container",
    ),
    "missing executable": ([{"name": "main", "image": "x", "command": ["/nonexistent/tool"]}], "cannot run"),
}


@pytest.mark.parametrize("containers,message", REFUSED_CASES.values(), ids=REFUSED_CASES.keys())
def test_pods_the_agent_cannot_run_fail_with_a_reason(api, namespace, containers, message):
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(
        namespace, {"metadata": {"name": "refused"}, "spec": {"restartPolicy": "Never", "containers": containers}}
    )
    pod = wait_for(
        lambda: (p := core.read_namespaced_pod("refused", namespace)).status.phase == "Failed" and p,
        timeout=60,
        what="pod refused Failed",
        describe=lambda: pod_summary(core, namespace),
    )
    assert pod.status.reason == "StartError"
    assert message in pod.status.message
    assert pod.status.container_statuses[0].state.terminated.exit_code == 128
