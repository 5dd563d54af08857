#!/usr/bin/env python3
"""Lint and render charts/tarbox-csi with Helm (helm-python-sdk, no helm binary), with the
default values and every values file under ci/, and validate every rendered object against the
Kubernetes schemas (kubernetes-validate, strict: unknown fields are errors). Objects of CRDs
(VolumeSnapshotClass, ServiceMonitor, PrometheusRule) have no schema there and are checked for
their identity only. Then assert what the driver relies on: the CSIDriver's attachRequired and
podInfoOnMount, the node plugin's privileges, and the provisioner's PVC metadata."""

import pathlib
import sys

import helm_python
import kubernetes_validate
import yaml

CHART = pathlib.Path(__file__).resolve().parent.parent / "charts" / "tarbox-csi"
KUBE = "1.34.0"
CRD_KINDS = {"VolumeSnapshotClass", "ServiceMonitor", "PrometheusRule"}


def fail(msg):
    print(f"chart-test: {msg}", file=sys.stderr)
    sys.exit(1)


def objects(values):
    with helm_python.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values=values, name="tarbox", namespace="kube-system",
                                is_install=True)
    out = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                out.append((path, doc))
    return out


def check(name, values):
    report = helm_python.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE}")
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    if problems or report.get("errors"):
        fail(f"{name}: helm lint: {problems or report['errors']}")
    objs = objects(values)
    if not objs:
        fail(f"{name}: nothing rendered")
    kinds = {}
    for path, obj in objs:
        kind = obj.get("kind")
        kinds.setdefault(kind, []).append(obj)
        if kind in CRD_KINDS:
            if not obj.get("apiVersion") or not obj.get("metadata", {}).get("name"):
                fail(f"{name}: {path}: {kind} without apiVersion or name")
            continue
        try:
            kubernetes_validate.validate(obj, KUBE, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(f"{name}: {path}: {kind} {obj['metadata'].get('name')}: {e.message}")
    driver = kinds["CSIDriver"][0]["spec"]
    if driver["attachRequired"] is not False or driver["podInfoOnMount"] is not True:
        fail(f"{name}: CSIDriver must not need attaching and must pass pod info")
    daemonsets = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d
                  for d in kinds["DaemonSet"]}
    for component in ["node", "mounter"]:
        if component not in daemonsets:
            fail(f"{name}: no {component} DaemonSet")
        pod = daemonsets[component]["spec"]["template"]["spec"]
        main = pod["containers"][0]
        if not pod.get("hostPID") or not main["securityContext"].get("privileged"):
            fail(f"{name}: the {component} pods need hostPID and privileges")
        if not any(m.get("mountPropagation") == "Bidirectional" for m in main["volumeMounts"]):
            fail(f"{name}: the {component} pods need the kubelet directory with Bidirectional "
                 "propagation")
    if "--mounter=external" not in daemonsets["node"]["spec"]["template"]["spec"]["containers"][0]["args"]:
        fail(f"{name}: the node plugin must leave the FUSE servers to the mounter")
    mounter = daemonsets["mounter"]["spec"]
    if mounter.get("updateStrategy", {}).get("type") != "OnDelete":
        fail(f"{name}: the mounter must only be replaced when its pods are deleted (OnDelete)")
    if not mounter["template"]["spec"]["containers"][0].get("resources", {}).get("limits"):
        fail(f"{name}: the mounter needs explicit resources")
    controller = kinds["Deployment"][0]["spec"]["template"]["spec"]["containers"]
    provisioner = next(c for c in controller if c["name"] == "csi-provisioner")
    if "--extra-create-metadata" not in provisioner["args"]:
        fail(f"{name}: the provisioner must pass PVC metadata")
    print(f"chart-test: {name}: lint clean, {len(objs)} objects valid for Kubernetes {KUBE}")
    return kinds


def main():
    defaults = check("default values", None)
    if "StorageClass" not in defaults:
        fail("default values: no StorageClass")
    for path in sorted((CHART / "ci").glob("*.yaml")):
        values = yaml.safe_load(path.read_text())
        kinds = check(path.name, values)
        if path.name == "all-on-values.yaml":
            for kind in ["Secret", "StorageClass", "VolumeSnapshotClass", "Service",
                         "ServiceMonitor", "PrometheusRule"]:
                if kind not in kinds:
                    fail(f"{path.name}: {kind} not rendered")
            params = kinds["StorageClass"][0]["parameters"]
            if params.get("auditLevel") != "full" or params.get("inodeQuota") != "1000000":
                fail(f"{path.name}: StorageClass parameters not passed as strings: {params}")
            if "[[rules]]\n" not in params.get("accessPolicy", ""):
                fail(f"{path.name}: the accessPolicy TOML did not arrive whole: {params}")
            if "[[native_mounts]]\n" not in params.get("nativeMounts", ""):
                fail(f"{path.name}: the nativeMounts TOML did not arrive whole: {params}")
            # Native-mount sources reach the FUSE servers at their mountPath, the host's /usr
            # never over the container's own.
            mounter = next(d for d in kinds["DaemonSet"]
                           if d["metadata"]["labels"]["app.kubernetes.io/component"] == "mounter")
            spec = mounter["spec"]["template"]["spec"]
            host = {v["name"]: v.get("hostPath", {}) for v in spec["volumes"]}
            seen = {m["mountPath"]: (host.get(m["name"], {}).get("path"), m.get("readOnly"))
                    for m in spec["containers"][0]["volumeMounts"]}
            if seen.get("/host/usr") != ("/usr", True) or "/usr" in seen \
                    or seen.get("/var/tarbox/venvs") != ("/var/tarbox/venvs", False):
                fail(f"{path.name}: native sources not mounted as asked: {seen}")
            # S3 keys reach every process that opens a data store, from the named Secret.
            pods = [kinds["Deployment"][0]] + kinds["DaemonSet"]
            for workload in pods:
                env = workload["spec"]["template"]["spec"]["containers"][0].get("env", [])
                keys = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef", {}).get("name")
                        for e in env}
                if keys.get("AWS_ACCESS_KEY_ID") != "tarbox-s3-keys" \
                        or keys.get("AWS_SECRET_ACCESS_KEY") != "tarbox-s3-keys":
                    fail(f"{path.name}: {workload['metadata']['name']} lacks the S3 keys: {keys}")
    # A bad value is refused by the schema, naming it.
    try:
        objects({"fsGroupPolicy": "Sometimes"})
    except helm_python.HelmError as e:
        if "fsGroupPolicy" not in str(e):
            fail(f"schema error does not name the value: {e}")
    else:
        fail("a bad fsGroupPolicy rendered")


if __name__ == "__main__":
    main()
