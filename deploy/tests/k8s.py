#!/usr/bin/env python3
"""deploy/k8s offline: render every kustomization (kubectl kustomize), validate
every object against the Kubernetes OpenAPI schemas that the kubernetes-validate
package ships (strict: unknown fields are errors), and check what the schemas
cannot: the embedded proxy configuration passes `speedmimi --check`, the probes
hit the admin health endpoint with the admin token, only namespaced sysctls,
the documented resources, no privilege, and the ServiceMonitor (a CRD, no
schema offline) points at a real port and Secret.

Usage: deploy/tests/k8s.py [BIN_DIR]   (BIN_DIR holds speedmimi; default target/release)
Skips (exit 0, with a message) when kubernetes-validate is not installed."""

import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
K8S = os.path.join(REPO, "deploy", "k8s")
# Kubernetes versions to validate against: the oldest with every field used
# (the preStop sleep action is 1.30) and the newest the package ships.
VERSIONS = ["1.30.0", "1.37.0"]
NAMESPACED_SYSCTL_PREFIXES = ("net.", "kernel.shm", "kernel.msg", "kernel.sem", "fs.mqueue.")
# Kubernetes' safe set: allowed without kubelet flags.
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports", "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes",
}
KUSTOMIZATIONS = {
    ".": 8,
    "base": 8,
    "overlays/prometheus-operator": 9,
    "overlays/tuned": 8,
}

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg)


def main():
    bin_dir = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "target", "release"))
    try:
        import yaml  # noqa: F401  (kubernetes-validate depends on PyYAML)
        import kubernetes_validate  # noqa: F401
    except ImportError:
        print("SKIPPED: python3 -m pip install kubernetes-validate (offline Kubernetes schemas); "
              "deploy/k8s was not validated")
        return 0
    import yaml

    kubectl = shutil.which("kubectl")
    rendered = {}
    if kubectl:
        for rel in KUSTOMIZATIONS:
            out = subprocess.run([kubectl, "kustomize", os.path.join(K8S, rel)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                fail(f"kubectl kustomize {rel}: {out.stderr.strip()}")
                continue
            rendered[rel] = [d for d in yaml.safe_load_all(out.stdout) if d]
    else:
        # No renderer: the base's resources are plain files; check the list.
        print("note: no kubectl: validating deploy/k8s/base's files as listed (no overlay rendering)")
        kz = yaml.safe_load(open(os.path.join(K8S, "base", "kustomization.yaml")))
        listed = set(kz["resources"])
        present = {f for f in os.listdir(os.path.join(K8S, "base"))
                   if f.endswith(".yaml") and f != "kustomization.yaml"}
        if listed != present:
            fail(f"base/kustomization.yaml resources {sorted(listed)} != files {sorted(present)}")
        docs = []
        for f in sorted(listed):
            docs += [d for d in yaml.safe_load_all(open(os.path.join(K8S, "base", f))) if d]
        rendered["base"] = docs

    with tempfile.TemporaryDirectory() as tmp:
        for rel, docs in rendered.items():
            want = KUSTOMIZATIONS[rel]
            if kubectl and len(docs) != want:
                fail(f"{rel}: {len(docs)} objects rendered, expected {want}")
            path = os.path.join(tmp, rel.replace("/", "_").replace(".", "top") + ".yaml")
            with open(path, "w") as f:
                yaml.safe_dump_all(docs, f)
            builtin = [d for d in docs if "monitoring.coreos.com" not in d["apiVersion"]]
            for version in VERSIONS:
                out = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict",
                                      "-k", version, path], capture_output=True, text=True)
                passed = out.stdout.count(" passed for resource ")
                if out.returncode != 0 or passed != len(builtin):
                    fail(f"kubernetes-validate --strict -k {version} {rel}: exit {out.returncode}, "
                         f"{passed}/{len(builtin)} passed\n{out.stdout}{out.stderr}")
                else:
                    print(f"ok: {rel}: {passed} objects valid against Kubernetes {version} (strict)")
            check_semantics(rel, docs, bin_dir, tmp)
    if failures:
        print(f"{len(failures)} failed")
        return 1
    print("ok: deploy/k8s")
    return 0


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def check_semantics(rel, docs, bin_dir, tmp):
    import yaml
    cm = by_kind(docs, "ConfigMap")[0]
    config_text = cm["data"]["speedmimi.yaml"]
    config = yaml.safe_load(config_text)
    secret = by_kind(docs, "Secret")[0]
    token_file = config["admin"].get("token_file", "")
    if "token" in config["admin"] or not token_file:
        fail(f"{rel}: the admin token must come from admin.token_file (the mounted Secret), "
             "not sit in the ConfigMap")
    # --check reads the token file: give it the Secret's value at a local path.
    local_token = os.path.join(tmp, "admin-token")
    with open(local_token, "w") as f:
        f.write(secret["stringData"][os.path.basename(token_file)] if token_file else "")
    cfg_path = os.path.join(tmp, "speedmimi.yaml")
    with open(cfg_path, "w") as f:
        f.write(config_text.replace(token_file, local_token) if token_file else config_text)
    speedmimi = os.path.join(bin_dir, "speedmimi")
    if os.access(speedmimi, os.X_OK):
        out = subprocess.run([speedmimi, "--check", "--config", cfg_path],
                             capture_output=True, text=True)
        if out.returncode != 0:
            fail(f"{rel}: the ConfigMap's speedmimi.yaml: {out.stdout}{out.stderr}")
    else:
        fail(f"{speedmimi} missing (make build, or pass BIN_DIR)")
    admin_port = int(config["admin"]["listen"].rsplit(":", 1)[1])
    proxy_port = int(config["server"]["listen"].rsplit(":", 1)[1])


    dep = by_kind(docs, "Deployment")[0]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    if ports.get("admin") != admin_port or ports.get("http") != proxy_port:
        fail(f"{rel}: container ports {ports} do not match the config ({proxy_port}, {admin_port})")
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    mounted = [m for m in c.get("volumeMounts", [])
               if vols.get(m["name"], {}).get("secret", {}).get("secretName")
               == secret["metadata"]["name"]]
    if not any(os.path.dirname(token_file) == m["mountPath"].rstrip("/") for m in mounted):
        fail(f"{rel}: admin.token_file {token_file} is not in a mount of Secret "
             f"{secret['metadata']['name']}")
    # The proxy runs as runAsUser/runAsGroup; the Secret's files are root's
    # with group fsGroup and mode defaultMode: the group must read them.
    psc0 = pod.get("securityContext", {})
    for m in mounted:
        mode = vols[m["name"]]["secret"].get("defaultMode", 0o644)
        if not (mode & 0o004 or (mode & 0o040 and psc0.get("fsGroup") == psc0.get("runAsGroup"))):
            fail(f"{rel}: the proxy (group {psc0.get('runAsGroup')}) cannot read the token file "
                 f"(defaultMode {mode:o}, fsGroup {psc0.get('fsGroup')})")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        g = c[probe]["httpGet"]
        headers = {h["name"]: h["value"] for h in g.get("httpHeaders", [])}
        if g["path"] != "/api/v1/health" or g["port"] != "admin":
            fail(f"{rel}: {probe} is not GET /api/v1/health on the admin port")
        if "Authorization" in headers:
            fail(f"{rel}: {probe} carries the admin token (the health endpoint needs none)")
    res = c["resources"]
    if res != {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}}:
        fail(f"{rel}: resources {res} are not the documented 2 CPU / 4Gi request, 4 CPU / 8Gi limit")
    if config["server"]["workers"] != int(res["limits"]["cpu"]):
        fail(f"{rel}: server.workers should equal the CPU limit")
    sc = c["securityContext"]
    if sc.get("privileged") or sc.get("allowPrivilegeEscalation") is not False \
            or sc.get("capabilities", {}).get("drop") != ["ALL"]:
        fail(f"{rel}: the container is not unprivileged: {sc}")
    psc = pod["securityContext"]
    if psc.get("runAsNonRoot") is not True:
        fail(f"{rel}: runAsNonRoot is not set")
    sysctls = [s["name"] for s in psc.get("sysctls", [])]
    if not sysctls:
        fail(f"{rel}: no sysctls")
    for s in sysctls:
        if not s.startswith(NAMESPACED_SYSCTL_PREFIXES):
            fail(f"{rel}: sysctl {s} is not namespaced")
        if rel != "overlays/tuned" and s not in SAFE_SYSCTLS:
            fail(f"{rel}: sysctl {s} is outside the safe set (belongs in components/unsafe-sysctls)")
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    if ann.get("prometheus.io/scrape") != "true" or ann.get("prometheus.io/port") != str(admin_port):
        fail(f"{rel}: prometheus.io annotations missing or on the wrong port")
    if pod.get("terminationGracePeriodSeconds", 30) <= 30:
        fail(f"{rel}: terminationGracePeriodSeconds must exceed graceful_timeout (30s)")

    services = by_kind(docs, "Service")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    for s in services:
        sel = s["spec"]["selector"]
        if any(labels.get(k) != v for k, v in sel.items()):
            fail(f"{rel}: Service {s['metadata']['name']} selects no pod of the Deployment")
    for sm in by_kind(docs, "ServiceMonitor"):
        want = sm["spec"]["selector"]["matchLabels"]
        matched = [s for s in services
                   if all(s["metadata"].get("labels", {}).get(k) == v for k, v in want.items())]
        if len(matched) != 1:
            fail(f"{rel}: the ServiceMonitor selects {len(matched)} Services")
            continue
        port_names = {p["name"] for p in matched[0]["spec"]["ports"]}
        for ep in sm["spec"]["endpoints"]:
            if ep["port"] not in port_names or ep["path"] != "/metrics":
                fail(f"{rel}: ServiceMonitor endpoint {ep} names no port of {port_names}")
            ref = ep["bearerTokenSecret"]
            if ref["name"] != secret["metadata"]["name"] or ref["key"] not in secret["stringData"]:
                fail(f"{rel}: ServiceMonitor token {ref} is not the admin-token Secret")
        if sm["metadata"].get("namespace") != dep["metadata"].get("namespace"):
            fail(f"{rel}: the ServiceMonitor is not in the Deployment's namespace")
        print(f"ok: {rel}: ServiceMonitor -> Service {matched[0]['metadata']['name']} port admin, token Secret")
    print(f"ok: {rel}: config passes speedmimi --check; probes, token, sysctls {sysctls}, resources")


if __name__ == "__main__":
    sys.exit(main())
