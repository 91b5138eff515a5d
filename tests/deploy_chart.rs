//! The Helm chart (`helm/smsvoice-pipeline`), checked with the real tools:
//! `helm lint --strict` and `helm template` with the default values, with
//! `ci/production-values.yaml` and with a values file that turns on every
//! secret; every rendered object validated by `kubernetes-validate --strict`
//! against Kubernetes 1.33's schemas (ServiceMonitor and PrometheusRule,
//! which are not Kubernetes kinds, against the openAPIV3Schema of the
//! prometheus-operator CRDs, made strict, with Python's `jsonschema`); the
//! rendered `config.toml` loaded by `smsvoice check-config` with the
//! container's environment (the `_FILE` variables pointing at files with
//! dummy secrets), so that the layering the pod sees is the one checked;
//! and the pod's wiring: termination grace longer than the shutdown grace,
//! probes on `/healthz` and `/readyz` at the port `[http] listen` uses, the
//! security context, Secret volumes named by values.
//!
//! The tools come from `scripts/install-deploy-tools.sh` (helm and the CRDs
//! in `${SMSVOICE_TOOLS:-$HOME/.cache/smsvoice-tools}`, else helm from PATH;
//! `kubernetes-validate` from PATH or Python). Without them each test prints
//! "skipped" and passes, unless `CI` or `SMSVOICE_REQUIRE_TOOLS` is set: then
//! a missing tool fails the test.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// Kubernetes version the objects are validated against.
const KUBERNETES_VERSION: &str = "1.33.0";
/// prometheus-operator release whose CRDs the install script copies.
const PROMETHEUS_OPERATOR_VERSION: &str = "v0.85.0";
/// The dummy content of every secret file (long enough for the API token).
const DUMMY_SECRET: &str = "dummy-secret-0123456789abcdef";
/// Where the chart mounts the Secrets.
const SECRET_DIR: &str = "/var/run/secrets/smsvoice/";

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/smsvoice-pipeline")
}

fn tools_dir() -> PathBuf {
    std::env::var_os("SMSVOICE_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".cache/smsvoice-tools")
        })
}

/// True when a missing tool must fail the test (CI, or asked for).
fn tools_required() -> bool {
    ["CI", "SMSVOICE_REQUIRE_TOOLS"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn python() -> OsString {
    std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into())
}

struct Tools {
    helm: PathBuf,
    /// Program and leading arguments of kubernetes-validate.
    validate: Vec<OsString>,
    crds: PathBuf,
}

/// The tools, or None after printing "skipped" (a panic where they are
/// required).
fn tools_or_skip(test: &str) -> Option<Tools> {
    let cache = tools_dir();
    let helm = Some(cache.join("bin/helm"))
        .filter(|p| p.is_file())
        .or_else(|| on_path("helm"));
    let validate = on_path("kubernetes-validate")
        .map(|p| vec![p.into_os_string()])
        .or_else(|| {
            let ok = Command::new(python())
                .args(["-c", "import kubernetes_validate"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            ok.then(|| vec![python(), "-m".into(), "kubernetes_validate".into()])
        });
    let crds = cache.join(format!(
        "prometheus-operator-crds-{PROMETHEUS_OPERATOR_VERSION}"
    ));
    let mut missing = Vec::new();
    if helm.is_none() {
        missing.push(format!(
            "helm (not in {} nor PATH)",
            cache.join("bin").display()
        ));
    }
    if validate.is_none() {
        missing.push("kubernetes-validate (not on PATH nor importable)".to_owned());
    }
    if !crds
        .join("monitoring.coreos.com_servicemonitors.yaml")
        .is_file()
    {
        missing.push(format!("the prometheus-operator CRDs ({})", crds.display()));
    }
    match (helm, validate, missing.is_empty()) {
        (Some(helm), Some(validate), true) => Some(Tools {
            helm,
            validate,
            crds,
        }),
        _ => {
            let msg = format!(
                "missing {} (run `bash scripts/install-deploy-tools.sh`)",
                missing.join(", ")
            );
            if tools_required() {
                panic!("{test}: {msg}; CI or SMSVOICE_REQUIRE_TOOLS is set, so this fails");
            }
            println!("{test}: skipped, {msg}");
            None
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn helm_args(cmd: &mut Command, values: &[&Path], sets: &[&str]) {
    for v in values {
        cmd.arg("-f").arg(v);
    }
    for s in sets {
        cmd.arg("--set").arg(s);
    }
}

fn lint(t: &Tools, values: &[&Path]) {
    let mut cmd = Command::new(&t.helm);
    cmd.args(["lint", "--strict"]).arg(chart());
    helm_args(&mut cmd, values, &[]);
    let out = run(&mut cmd);
    assert!(
        out.status.success(),
        "helm lint --strict {values:?} failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// `helm template`: the YAML, or helm's error output.
fn render(t: &Tools, values: &[&Path], sets: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new(&t.helm);
    cmd.args(["template", "smsvoice"])
        .arg(chart())
        .args(["--namespace", "messaging"]);
    helm_args(&mut cmd, values, sets);
    let out = run(&mut cmd);
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

/// Every document of a YAML stream, as JSON (Python's YAML parser: the one
/// kubectl-like tools and kubernetes-validate use).
fn yaml_docs(yaml: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("in.yaml");
    std::fs::write(&file, yaml).expect("write yaml");
    let out = run(Command::new(python())
        .arg("-c")
        .arg(YAML_TO_JSON)
        .arg(&file));
    assert!(
        out.status.success(),
        "YAML did not parse: {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json from python")
}

const YAML_TO_JSON: &str = r#"
import json, sys, yaml
with open(sys.argv[1]) as f:
    json.dump([d for d in yaml.safe_load_all(f) if d is not None], sys.stdout)
"#;

/// Validates the CRD kinds of a JSON list of objects against the CRDs'
/// openAPIV3Schema, made strict: an object schema with properties and
/// neither additionalProperties nor x-kubernetes-preserve-unknown-fields
/// rejects other properties (as the API server does with strict field
/// validation; without it it drops them silently).
const CRD_VALIDATE: &str = r#"
import glob, json, os, sys, yaml, jsonschema
crds = {}
for path in glob.glob(os.path.join(sys.argv[1], "*.yaml")):
    with open(path) as f:
        for d in yaml.safe_load_all(f):
            if not d or d.get("kind") != "CustomResourceDefinition":
                continue
            for v in d["spec"]["versions"]:
                if v.get("served"):
                    key = (d["spec"]["group"] + "/" + v["name"], d["spec"]["names"]["kind"])
                    crds[key] = v["schema"]["openAPIV3Schema"]
def strict(s):
    if isinstance(s, dict):
        if (s.get("type") == "object" and "properties" in s and "additionalProperties" not in s
                and not s.get("x-kubernetes-preserve-unknown-fields")):
            s["additionalProperties"] = False
        for v in s.values():
            strict(v)
    elif isinstance(s, list):
        for v in s:
            strict(v)
for s in crds.values():
    strict(s)
bad = 0
for o in json.load(sys.stdin):
    key = (o.get("apiVersion"), o.get("kind"))
    if key not in crds:
        continue
    name = "%s/%s" % (o["kind"], (o.get("metadata") or {}).get("name"))
    if not (o.get("metadata") or {}).get("name"):
        print("%s: metadata.name missing" % name)
        bad += 1
    for e in sorted(jsonschema.Draft7Validator(crds[key]).iter_errors(o), key=lambda e: list(map(str, e.path))):
        print("%s: %s: %s" % (name, "/".join(map(str, e.path)), e.message))
        bad += 1
    print("validated %s against the %s CRD" % (name, key[0]))
sys.exit(1 if bad else 0)
"#;

/// CRD kinds of the chart (not in the Kubernetes schemas).
const CRD_KINDS: [&str; 2] = ["ServiceMonitor", "PrometheusRule"];

/// Runs the CRD validation; Ok(stdout) or Err(stdout + stderr).
fn validate_crds(t: &Tools, docs: &[Value]) -> Result<String, String> {
    let mut child = Command::new(python())
        .arg("-c")
        .arg(CRD_VALIDATE)
        .arg(&t.crds)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(&serde_json::to_vec(docs).expect("json"))
            .expect("write to python");
    }
    let out = child.wait_with_output().expect("python");
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(format!("{}{}", text(&out.stdout), text(&out.stderr)))
    }
}

fn kubernetes_validate(t: &Tools, yaml: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, yaml).expect("write");
    let mut cmd = Command::new(&t.validate[0]);
    cmd.args(&t.validate[1..])
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .arg(&file);
    let out = run(&mut cmd);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "kubernetes-validate --strict failed:\n{all}"
    );
    // Only the CRD kinds may be unknown to it (they are checked below).
    for line in all.lines().filter(|l| l.contains("Couldn't find schema")) {
        assert!(
            CRD_KINDS
                .iter()
                .any(|k| line.contains(&format!("kind {k} "))),
            "no schema for a kind that should have one: {line}"
        );
    }
    assert!(
        all.contains("passed for resource deployment/")
            || all.contains("passed for resource statefulset/"),
        "the workload validated: {all}"
    );
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn one<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    let found = kind(docs, k);
    assert_eq!(found.len(), 1, "expected one {k}, found {}", found.len());
    found[0]
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

/// Merges `over` into `base` as Helm merges values files.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(bv) if bv.is_object() && v.is_object() => merge(bv, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// The values in effect (values.yaml, then each file).
fn values(files: &[&Path]) -> Value {
    let mut v =
        yaml_docs(&std::fs::read_to_string(chart().join("values.yaml")).expect("values.yaml"))
            .remove(0);
    for f in files {
        let over = yaml_docs(&std::fs::read_to_string(f).expect("values file")).remove(0);
        merge(&mut v, &over);
    }
    v
}

/// The Secret names the values give (secrets.*.secretName, non-empty).
fn secret_names(values: &Value) -> BTreeSet<String> {
    values["secrets"]
        .as_object()
        .expect("secrets")
        .values()
        .filter_map(|s| s["secretName"].as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The port a probe or Service names (a number or a container port name).
fn resolve_port(port: &Value, container: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = str_of(port, "port");
    container["ports"]
        .as_array()
        .expect("container ports")
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

/// What one rendering is checked for.
struct Expect {
    /// Kinds that must be rendered.
    kinds: &'static [&'static str],
    /// Secret volumes that must be mounted.
    secret_volumes: &'static [&'static str],
}

/// Every check of one set of values; returns the rendered objects.
fn check_values(t: &Tools, files: &[&Path], expect: &Expect) -> Vec<Value> {
    lint(t, files);
    let yaml = render(t, files, &[]).unwrap_or_else(|e| panic!("helm template {files:?}: {e}"));
    kubernetes_validate(t, &yaml);
    let docs = yaml_docs(&yaml);
    let rendered: BTreeSet<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for k in expect.kinds {
        assert!(rendered.contains(k), "{k} not rendered: {rendered:?}");
    }
    // Every object kubernetes-validate could not check is a CRD kind, each
    // checked against the CRD.
    let crd_out = validate_crds(t, &docs).unwrap_or_else(|e| panic!("CRD validation:\n{e}"));
    for d in docs
        .iter()
        .filter(|d| CRD_KINDS.iter().any(|k| d["kind"] == *k))
    {
        let name = format!(
            "{}/{}",
            str_of(&d["kind"], "kind"),
            str_of(&d["metadata"]["name"], "name")
        );
        assert!(
            crd_out.contains(&format!("validated {name} ")),
            "{name} not validated:\n{crd_out}"
        );
    }
    let vals = values(files);
    check_pod(&docs, &vals, expect);
    check_monitoring(&docs);
    docs
}

/// The rendered config.toml (the ConfigMap mounted at /etc/smsvoice).
fn config_toml(docs: &[Value]) -> String {
    let cms: Vec<&Value> = kind(docs, "ConfigMap")
        .into_iter()
        .filter(|c| c["data"]["config.toml"].is_string())
        .collect();
    assert_eq!(cms.len(), 1, "one ConfigMap with config.toml");
    str_of(&cms[0]["data"]["config.toml"], "config.toml").to_owned()
}

/// The workload: the one Deployment or StatefulSet (`workload`).
fn workload(docs: &[Value]) -> &Value {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "StatefulSet")
        .collect();
    assert_eq!(found.len(), 1, "one Deployment or StatefulSet");
    found[0]
}

/// The workload's pod spec and its smsvoice container.
fn pod(docs: &[Value]) -> (&Value, &Value) {
    let spec = &workload(docs)["spec"]["template"]["spec"];
    let containers = spec["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container");
    (spec, &containers[0])
}

/// Runs `smsvoice check-config` on the rendered config.toml with the
/// container's environment; returns the effective configuration it prints.
fn check_config(docs: &[Value], secrets: &BTreeSet<String>) -> Result<(String, String), String> {
    let (spec, c) = pod(docs);
    let dir = tempfile::tempdir().expect("tempdir");
    let toml_path = dir.path().join("config.toml");
    std::fs::write(&toml_path, config_toml(docs)).expect("write config.toml");
    // Files the Secret volumes project: pod path -> volume.
    let mut projected = BTreeSet::new();
    let volumes = spec["volumes"].as_array().expect("volumes");
    for m in c["volumeMounts"].as_array().expect("volumeMounts") {
        let v = volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("volumeMount {} names no volume", m["name"]));
        if let Some(items) = v["secret"]["items"].as_array() {
            for i in items {
                projected.insert(format!(
                    "{}/{}",
                    str_of(&m["mountPath"], "mountPath"),
                    str_of(&i["path"], "path")
                ));
            }
        }
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_smsvoice"));
    cmd.env_clear()
        .arg("check-config")
        .arg("--config")
        .arg(&toml_path);
    let mut names = Vec::new();
    for (n, e) in c["env"].as_array().into_iter().flatten().enumerate() {
        let name = str_of(&e["name"], "env name");
        names.push(name.to_owned());
        let value = if let Some(v) = e["value"].as_str() {
            if v.starts_with(SECRET_DIR) {
                assert!(
                    projected.contains(v),
                    "{name}={v}: no Secret volume projects this file ({projected:?})"
                );
            }
            if name.ends_with("_FILE") {
                // The pod reads a mounted Secret file: here a file with a dummy secret.
                let f = dir.path().join(format!("secret-{n}"));
                std::fs::write(&f, format!("{DUMMY_SECRET}\n")).expect("write secret");
                f.display().to_string()
            } else {
                v.to_owned()
            }
        } else if e["valueFrom"]["fieldRef"].is_object() {
            "smsvoice-7d4b9c8f6-abcde".to_owned()
        } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
            let s = str_of(&r["name"], "secretKeyRef.name");
            assert!(
                secrets.contains(s),
                "{name}: Secret {s} is not one named by values ({secrets:?})"
            );
            DUMMY_SECRET.to_owned()
        } else {
            panic!("env {name}: unexpected {e}");
        };
        cmd.env(name, value);
    }
    let out = run(&mut cmd);
    if !out.status.success() {
        return Err(format!(
            "exit {:?}: {}{}",
            out.status.code(),
            text(&out.stdout),
            text(&out.stderr)
        ));
    }
    let stdout = text(&out.stdout);
    for n in names
        .iter()
        .filter(|n| n.starts_with("SMSVOICE_") && *n != "SMSVOICE_INSTANCE_ID")
    {
        assert!(
            stdout.lines().any(|l| l.starts_with('#')
                && (l.ends_with(&format!("<- {n}")) || l.contains(&format!("<- {n}=")))),
            "check-config did not apply {n}:\n{stdout}"
        );
    }
    Ok((stdout, text(&out.stderr)))
}

fn check_pod(docs: &[Value], vals: &Value, expect: &Expect) {
    let secrets = secret_names(vals);
    let (effective, _) =
        check_config(docs, &secrets).unwrap_or_else(|e| panic!("check-config: {e}"));
    // The effective configuration printed by check-config is TOML (secrets
    // masked): the values the pod runs with, environment included.
    let eff: toml::Table = effective
        .parse()
        .unwrap_or_else(|e| panic!("{e}:\n{effective}"));
    let (spec, c) = pod(docs);
    let deployment = workload(docs);
    assert_eq!(deployment["spec"]["replicas"], vals["replicas"]);
    assert_eq!(
        c["args"],
        serde_json::json!(["run", "--config", "/etc/smsvoice/config.toml"])
    );

    // Termination grace longer than the shutdown grace.
    let grace_ms = eff
        .get("kafka")
        .and_then(|k| k.get("shutdown_grace_ms"))
        .and_then(toml::Value::as_integer)
        .unwrap_or(30000);
    let term = spec["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        term * 1000 > grace_ms,
        "terminationGracePeriodSeconds {term} s <= shutdown_grace_ms {grace_ms}"
    );

    // Probes at the port [http] listen uses, on all interfaces.
    let listen = eff
        .get("http")
        .and_then(|h| h.get("listen"))
        .and_then(toml::Value::as_str)
        .unwrap_or("127.0.0.1:9464");
    let addr: std::net::SocketAddr = listen
        .parse()
        .unwrap_or_else(|e| panic!("listen {listen}: {e}"));
    assert!(
        addr.ip().is_unspecified(),
        "[http] listen {listen}: not reachable from outside the pod"
    );
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(
            resolve_port(&get["port"], c),
            u64::from(addr.port()),
            "{probe} port"
        );
    }
    let service = one(docs, "Service");
    let sp = &service["spec"]["ports"][0];
    assert_eq!(
        resolve_port(&sp["targetPort"], c),
        u64::from(addr.port()),
        "Service targetPort"
    );
    for (k, v) in deployment["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("selector")
    {
        assert_eq!(&service["spec"]["selector"][k], v, "Service selector {k}");
        assert_eq!(
            &deployment["spec"]["template"]["metadata"]["labels"][k], v,
            "pod label {k}"
        );
    }
    assert!(
        deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"].is_string(),
        "config checksum annotation"
    );

    // Security context.
    let psc = &spec["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert_eq!(psc["runAsUser"], 65532);
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert!(
        c["resources"]["requests"]["memory"].is_string()
            && c["resources"]["limits"]["memory"].is_string(),
        "memory request and limit"
    );

    // Volumes: every mount has its volume; /tmp is writable; Secret volumes
    // name Secrets of the values only.
    let volumes = spec["volumes"].as_array().expect("volumes");
    let mounts = c["volumeMounts"].as_array().expect("volumeMounts");
    for m in mounts {
        assert!(
            volumes.iter().any(|v| v["name"] == m["name"]),
            "mount {} has no volume",
            m["name"]
        );
    }
    let tmp = mounts
        .iter()
        .find(|m| m["mountPath"] == "/tmp")
        .expect("/tmp mounted");
    assert!(
        volumes
            .iter()
            .any(|v| v["name"] == tmp["name"] && v["emptyDir"].is_object()),
        "/tmp is an emptyDir"
    );
    let mut secret_volumes = BTreeSet::new();
    for v in volumes.iter().filter(|v| v["secret"].is_object()) {
        let name = str_of(&v["secret"]["secretName"], "secretName");
        assert!(
            secrets.contains(name),
            "Secret volume {} names {name}, not a secretName of the values ({secrets:?})",
            v["name"]
        );
        assert!(
            mounts.iter().any(|m| m["name"] == v["name"]),
            "Secret volume {} not mounted",
            v["name"]
        );
        secret_volumes.insert(str_of(&v["name"], "name").to_owned());
    }
    let want: BTreeSet<String> = expect
        .secret_volumes
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(secret_volumes, want, "Secret volumes");
    // A local archive directory is a mounted volume (the root is read-only).
    if let Some(uri) = eff
        .get("archive")
        .and_then(|a| a.get("uri"))
        .and_then(toml::Value::as_str)
    {
        if !uri.starts_with("s3://") {
            assert!(
                mounts.iter().any(|m| m["mountPath"] == uri),
                "local archive {uri} not mounted"
            );
        }
    }
    // The ServiceAccount the pod uses is rendered (when created).
    if vals["serviceAccount"]["create"] == true {
        let sa = one(docs, "ServiceAccount");
        assert_eq!(sa["metadata"]["name"], spec["serviceAccountName"]);
        let want = &vals["serviceAccount"]["annotations"];
        if want.as_object().is_some_and(|m| !m.is_empty()) {
            assert_eq!(
                &sa["metadata"]["annotations"], want,
                "ServiceAccount annotations"
            );
        }
    }
}

fn check_monitoring(docs: &[Value]) {
    let service = one(docs, "Service");
    for sm in kind(docs, "ServiceMonitor") {
        for (k, v) in sm["spec"]["selector"]["matchLabels"]
            .as_object()
            .expect("selector")
        {
            assert_eq!(
                &service["metadata"]["labels"][k], v,
                "ServiceMonitor selects the Service ({k})"
            );
        }
        let ep = &sm["spec"]["endpoints"][0];
        assert_eq!(ep["port"], service["spec"]["ports"][0]["name"]);
        assert_eq!(ep["path"], "/metrics");
    }
    for pr in kind(docs, "PrometheusRule") {
        let file = std::fs::read_to_string(chart().join("files/prometheus-rules.yaml"))
            .expect("rules file");
        let rules = yaml_docs(&file).remove(0);
        assert!(
            rules["groups"].as_array().is_some_and(|g| !g.is_empty()),
            "rules file has groups"
        );
        assert_eq!(
            pr["spec"]["groups"], rules["groups"],
            "PrometheusRule groups are the rule file's"
        );
    }
    for cm in kind(docs, "ConfigMap")
        .into_iter()
        .filter(|c| c["metadata"]["labels"]["grafana_dashboard"].is_string())
    {
        assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
        let data = cm["data"].as_object().expect("data");
        assert_eq!(data.len(), 1, "one dashboard");
        let (key, json) = data.iter().next().expect("dashboard");
        assert!(key.ends_with(".json"), "{key}");
        let got: Value = serde_json::from_str(str_of(json, "dashboard")).expect("dashboard JSON");
        let file = std::fs::read_to_string(chart().join("files/grafana-dashboard.json"))
            .expect("dashboard file");
        let want: Value =
            serde_json::from_str(&file).expect("files/grafana-dashboard.json is JSON");
        assert_eq!(got, want, "dashboard is the file's");
    }
}

const DEFAULT_KINDS: &[&str] = &[
    "Deployment",
    "ConfigMap",
    "Service",
    "ServiceAccount",
    "PodDisruptionBudget",
];

#[test]
fn default_values() {
    let Some(t) = tools_or_skip("default_values") else {
        return;
    };
    let docs = check_values(
        &t,
        &[],
        &Expect {
            kinds: DEFAULT_KINDS,
            secret_volumes: &[],
        },
    );
    for k in CRD_KINDS {
        assert!(kind(&docs, k).is_empty(), "{k} is off by default");
    }
    // Whole numbers are TOML integers (Helm reads them as floats).
    let toml = config_toml(&docs);
    assert!(
        toml.contains("\npartitions = 6\n") && toml.contains("\nshutdown_grace_ms = 30000\n"),
        "{toml}"
    );
    assert!(
        !toml.contains(".0\n") && !toml.contains("e+"),
        "a number written as a float:\n{toml}"
    );
}

#[test]
fn production_values() {
    let Some(t) = tools_or_skip("production_values") else {
        return;
    };
    let prod = chart().join("ci/production-values.yaml");
    let docs = check_values(
        &t,
        &[&prod],
        &Expect {
            kinds: &[
                "StatefulSet",
                "ConfigMap",
                "Service",
                "ServiceAccount",
                "PodDisruptionBudget",
                "ServiceMonitor",
                "PrometheusRule",
            ],
            secret_volumes: &["kafka-sasl", "http-token"],
        },
    );
    let (spec, _) = pod(&docs);
    // Exactly once on a StatefulSet: stable pod names, so stable
    // transactional ids; the pod name is the instance id.
    let set = one(&docs, "StatefulSet");
    assert_eq!(set["spec"]["replicas"], 3);
    assert_eq!(set["spec"]["podManagementPolicy"], "Parallel");
    assert_eq!(
        set["spec"]["serviceName"],
        one(&docs, "Service")["metadata"]["name"]
    );
    assert!(set["spec"].get("strategy").is_none(), "{set}");
    let (_, c) = pod(&docs);
    let id = c["env"]
        .as_array()
        .and_then(|e| e.iter().find(|v| v["name"] == "SMSVOICE_INSTANCE_ID"))
        .expect("SMSVOICE_INSTANCE_ID");
    assert_eq!(id["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
    assert!(spec["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"].is_object());
    assert!(
        kind(&docs, "ConfigMap")
            .iter()
            .any(|c| c["metadata"]["labels"]["grafana_dashboard"] == "1"),
        "dashboard ConfigMap"
    );
    let sa = one(&docs, "ServiceAccount");
    assert!(
        sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].is_string(),
        "IRSA annotation"
    );
    let toml = config_toml(&docs);
    for line in [
        "exactly_once = true",
        "\"security.protocol\" = \"SASL_SSL\"",
        "\"sasl.mechanism\" = \"SCRAM-SHA-512\"",
        "[[spend.alarms]]",
        "uri = \"s3://",
    ] {
        assert!(toml.contains(line), "{line} not in config.toml:\n{toml}");
    }
    assert!(toml.contains(":9096"), "MSK SASL/SCRAM port");
}

/// Every secret on, TLS with a client certificate, static S3 keys, a local
/// archive on a claim, an explicit termination grace.
#[test]
fn every_secret() {
    let Some(t) = tools_or_skip("every_secret") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("values.yaml");
    std::fs::write(
        &file,
        r#"
config:
  kafka:
    shutdown_grace_ms: 50000
    properties:
      "security.protocol": SASL_SSL
      "sasl.mechanism": SCRAM-SHA-256
      "sasl.username": smsvoice
  archive:
    uri: /var/lib/smsvoice/archive
archiveVolume:
  persistentVolumeClaim:
    claimName: smsvoice-archive
terminationGracePeriodSeconds: 75
secrets:
  kafkaSasl: {secretName: kafka-scram, passwordKey: pw}
  kafkaTls: {secretName: kafka-tls-files, caKey: ca.pem, certKey: client.pem, keyKey: client.key, keyPasswordKey: key.pw}
  httpToken: {secretName: api-token, tokenKey: t}
  s3: {secretName: s3-keys, sessionTokenKey: AWS_SESSION_TOKEN}
"#,
    )
    .expect("write values");
    let docs = check_values(
        &t,
        &[&file],
        &Expect {
            kinds: DEFAULT_KINDS,
            secret_volumes: &["kafka-sasl", "kafka-tls", "http-token"],
        },
    );
    let (spec, c) = pod(&docs);
    assert_eq!(spec["terminationGracePeriodSeconds"], 75);
    let env: BTreeMap<&str, &Value> = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| (str_of(&e["name"], "name"), e))
        .collect();
    for (name, value) in [
        (
            "SMSVOICE_KAFKA__PROPERTIES__SASL_PASSWORD_FILE",
            "/var/run/secrets/smsvoice/kafka-sasl/pw",
        ),
        (
            "SMSVOICE_KAFKA__PROPERTIES__SSL_CA_LOCATION",
            "/var/run/secrets/smsvoice/kafka-tls/ca.pem",
        ),
        (
            "SMSVOICE_KAFKA__PROPERTIES__SSL_CERTIFICATE_LOCATION",
            "/var/run/secrets/smsvoice/kafka-tls/client.pem",
        ),
        (
            "SMSVOICE_KAFKA__PROPERTIES__SSL_KEY_LOCATION",
            "/var/run/secrets/smsvoice/kafka-tls/client.key",
        ),
        (
            "SMSVOICE_KAFKA__PROPERTIES__SSL_KEY_PASSWORD_FILE",
            "/var/run/secrets/smsvoice/kafka-tls/key.pw",
        ),
        (
            "SMSVOICE_HTTP__TOKEN_FILE",
            "/var/run/secrets/smsvoice/http-token/t",
        ),
    ] {
        assert_eq!(
            env.get(name).map(|e| &e["value"]),
            Some(&Value::from(value)),
            "{name}"
        );
    }
    for name in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    ] {
        let r = &env.get(name).unwrap_or_else(|| panic!("{name}"))["valueFrom"]["secretKeyRef"];
        assert_eq!(r["name"], "s3-keys", "{name}");
    }
    let archive = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "archive")
        .expect("archive volume");
    assert_eq!(
        archive["persistentVolumeClaim"]["claimName"],
        "smsvoice-archive"
    );
}

/// A configuration key smsvoice does not know renders (the chart passes
/// config through) but fails check-config, naming the key.
#[test]
fn unknown_config_key_fails_check_config() {
    let Some(t) = tools_or_skip("unknown_config_key_fails_check_config") else {
        return;
    };
    let yaml = render(&t, &[], &["config.kafka.partition_count=6"]).expect("renders");
    let docs = yaml_docs(&yaml);
    let err =
        check_config(&docs, &BTreeSet::new()).expect_err("check-config accepted an unknown key");
    assert!(
        err.starts_with("exit Some(2)") && err.contains("partition_count"),
        "{err}"
    );
    // A wrong type too: a string where a number is expected.
    let yaml = render(&t, &[], &["config.kafka.partitions=six"]).expect("renders");
    let err = check_config(&yaml_docs(&yaml), &BTreeSet::new())
        .expect_err("check-config accepted partitions = \"six\"");
    assert!(err.contains("partitions"), "{err}");
}

/// The render refuses what cannot work in a pod, with a message naming the value.
#[test]
fn render_refuses_unusable_values() {
    let Some(t) = tools_or_skip("render_refuses_unusable_values") else {
        return;
    };
    for (set, says) in [
        ("terminationGracePeriodSeconds=30", "shutdown_grace_ms"),
        (
            "config.kafka.shutdown_grace_ms=90000,terminationGracePeriodSeconds=60",
            "shutdown_grace_ms",
        ),
        ("config.http.listen=127.0.0.1:9464", "loopback"),
        ("config.http.listen=", "empty"),
        ("config.archive.uri=archive", "absolute path"),
        ("workload=DaemonSet", "Deployment or StatefulSet"),
    ] {
        let err = render(&t, &[], &[set]).expect_err(set);
        assert!(err.contains(says), "--set {set}: {err}");
    }
    // Derived: the shutdown grace plus the margin.
    let yaml = render(&t, &[], &["config.kafka.shutdown_grace_ms=90500"]).expect("renders");
    let docs = yaml_docs(&yaml);
    let (spec, _) = pod(&docs);
    assert_eq!(spec["terminationGracePeriodSeconds"], 91 + 15);
    // Another port: container port, probes and Service follow it.
    let yaml = render(&t, &[], &["config.http.listen=0.0.0.0:8080"]).expect("renders");
    let docs = yaml_docs(&yaml);
    let (_, c) = pod(&docs);
    assert_eq!(
        resolve_port(&c["readinessProbe"]["httpGet"]["port"], c),
        8080
    );
}

/// A change of the configuration changes the pod template (pods roll).
#[test]
fn config_change_rolls_pods() {
    let Some(t) = tools_or_skip("config_change_rolls_pods") else {
        return;
    };
    let checksum = |sets: &[&str]| {
        let docs = yaml_docs(&render(&t, &[], sets).expect("renders"));
        workload(&docs)["spec"]["template"]["metadata"]["annotations"]["checksum/config"].clone()
    };
    assert_eq!(checksum(&[]), checksum(&[]));
    assert_ne!(checksum(&[]), checksum(&["config.kafka.partitions=12"]));
}

/// The CRD validation rejects what the API server would (so it can fail).
#[test]
fn crd_validation_rejects_invalid_objects() {
    let Some(t) = tools_or_skip("crd_validation_rejects_invalid_objects") else {
        return;
    };
    let prod = chart().join("ci/production-values.yaml");
    let docs = yaml_docs(&render(&t, &[&prod], &[]).expect("renders"));
    let mut bad = docs.clone();
    for d in bad.iter_mut().filter(|d| d["kind"] == "ServiceMonitor") {
        d["spec"]["endpoints"][0]["scrapeEvery"] = Value::from("30s");
    }
    let err = validate_crds(&t, &bad).expect_err("unknown ServiceMonitor field accepted");
    assert!(err.contains("scrapeEvery"), "{err}");
    let mut bad = docs;
    for d in bad.iter_mut().filter(|d| d["kind"] == "PrometheusRule") {
        d["spec"]["groups"][0]["rules"] = Value::from("not a list");
    }
    let err = validate_crds(&t, &bad).expect_err("PrometheusRule with rules not a list accepted");
    assert!(err.contains("rules"), "{err}");
}
