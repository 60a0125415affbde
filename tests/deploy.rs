//! The deployment files (`deploy/`, docs/deployment.md) checked offline: no network, no
//! Docker, no Kubernetes API server.
//!
//! - Every YAML document under `deploy/` parses (serde_yaml), and every Kubernetes object
//!   has an apiVersion, a kind and a name, in the kustomization's namespace.
//! - Every probe and Service port names a port the selected containers declare; node probes
//!   are `GET /readyz` (readiness) and `GET /healthz` (liveness) on the port the role's
//!   config file binds its HTTP listener to.
//! - Every StatefulSet has a headless Service as its `serviceName`; every PodDisruptionBudget
//!   selects pods that exist; the metastore keeps its voters (replicas = peers, 3 or 5).
//! - `deploy/material.sh` makes the Secrets the manifests mount (with the real
//!   `firetower certs`), and every pod of every StatefulSet, with its environment resolved
//!   as the kubelet would (ordinal, pod name, Secret keys, `$(VAR)`) and its volumes laid out
//!   in a temporary directory, passes `firetower config check`; the effective config names
//!   the pod's own id, certificate and stable address.
//! - The compose file: every service's config file, volumes, dependencies and ports exist
//!   and agree, and every node passes `firetower config check` with its environment.
//!
//! The binary is the one cargo built for this test (`CARGO_BIN_EXE_firetower`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::Deserialize;
use serde_yaml::Value;

const BIN: &str = env!("CARGO_BIN_EXE_firetower");

/// The namespace every namespaced object lives in (and kustomization.yaml sets).
const NAMESPACE: &str = "firetower";

/// The roles that run from a config file (the first argument of their container).
const ROLES: [&str; 3] = ["metastore", "distributor", "edge"];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn k8s_dir() -> PathBuf {
    deploy_dir().join("k8s")
}

fn compose_file() -> PathBuf {
    deploy_dir().join("compose").join("docker-compose.yml")
}

// ---------------------------------------------------------------------------------------
// Reading YAML and TOML

/// Every file under `dir` whose name ends with one of `exts`, sorted.
fn files_under(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| exts.contains(&e))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Every document of a YAML file (empty ones left out), with merge keys (`<<`) applied.
fn yaml_documents(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    yaml_documents_of(&text).with_context(|| format!("{}", path.display()))
}

fn yaml_documents_of(text: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let mut value = Value::deserialize(doc)?;
        // A merge may bring another `<<` (an anchor built on an anchor): apply until none.
        for _ in 0..8 {
            value.apply_merge()?;
        }
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path).and_then(Value::as_str)
}

fn seq_at<'a>(value: &'a Value, path: &[&str]) -> &'a [Value] {
    at(value, path)
        .and_then(Value::as_sequence)
        .map_or(&[], Vec::as_slice)
}

/// A scalar as text (YAML numbers and booleans included), as Kubernetes and compose read
/// environment values and ports.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A mapping of string keys to string values (labels, selectors).
fn string_map(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_string(), scalar(v)?)))
                .collect()
        })
        .unwrap_or_default()
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// `host:port` split at the last colon.
fn host_port(addr: &str) -> Result<(&str, u16)> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("{addr:?} is not HOST:PORT"))?;
    Ok((host, port.parse().with_context(|| format!("{addr:?}"))?))
}

/// Standard base64 (what Secrets' `data` holds); the test has no base64 crate.
fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
    {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => bail!("not base64: {:?}", c as char),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// The Kubernetes manifests

#[derive(Debug, Clone)]
struct Object {
    file: PathBuf,
    kind: String,
    name: String,
    value: Value,
}

impl Object {
    fn what(&self) -> String {
        let file = self.file.strip_prefix(deploy_dir()).unwrap_or(&self.file);
        format!("{} {} ({})", self.kind, self.name, file.display())
    }
}

/// The manifests, and the ConfigMaps kustomization.yaml makes (name → key → content).
struct Manifests {
    objects: Vec<Object>,
    config_maps: BTreeMap<String, BTreeMap<String, String>>,
}

impl Manifests {
    fn load() -> Result<Self> {
        let dir = k8s_dir();
        let kustomization = dir.join("kustomization.yaml");
        let kust = yaml_documents(&kustomization)?
            .pop()
            .ok_or_else(|| anyhow!("kustomization.yaml is empty"))?;
        ensure!(
            str_at(&kust, &["kind"]) == Some("Kustomization"),
            "kustomization.yaml: kind"
        );
        ensure!(
            str_at(&kust, &["namespace"]) == Some(NAMESPACE),
            "kustomization.yaml: namespace"
        );
        // Every manifest is a resource of the kustomization, and every resource exists.
        let resources: BTreeSet<PathBuf> = seq_at(&kust, &["resources"])
            .iter()
            .map(|r| {
                r.as_str()
                    .map(|r| dir.join(r))
                    .ok_or_else(|| anyhow!("kustomization.yaml: a resource is not a path"))
            })
            .collect::<Result<_>>()?;
        let manifests: BTreeSet<PathBuf> = files_under(&dir, &["yaml", "yml"])?
            .into_iter()
            .filter(|p| p != &kustomization)
            .collect();
        ensure!(
            resources == manifests,
            "kustomization.yaml resources {resources:?} are not the manifests {manifests:?}"
        );
        let mut config_maps = BTreeMap::new();
        for generator in seq_at(&kust, &["configMapGenerator"]) {
            let name = str_at(generator, &["name"]).context("configMapGenerator: name")?;
            let mut data = BTreeMap::new();
            for file in seq_at(generator, &["files"]) {
                let file = file.as_str().context("configMapGenerator: a file")?;
                let path = dir.join(file);
                let key = path.file_name().unwrap().to_string_lossy().to_string();
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("configMapGenerator {name}: {file}"))?;
                data.insert(key, text);
            }
            config_maps.insert(name.to_string(), data);
        }
        let mut objects = Vec::new();
        for file in manifests {
            for value in yaml_documents(&file)? {
                let where_ = file.display();
                let api = str_at(&value, &["apiVersion"]);
                let kind = str_at(&value, &["kind"]);
                let name = str_at(&value, &["metadata", "name"]);
                let (Some(_), Some(kind), Some(name)) = (api, kind, name) else {
                    bail!("{where_}: an object without apiVersion, kind or metadata.name");
                };
                if kind != "Namespace" {
                    ensure!(
                        str_at(&value, &["metadata", "namespace"]) == Some(NAMESPACE),
                        "{where_}: {kind} {name} is not in namespace {NAMESPACE}"
                    );
                }
                if kind == "ConfigMap" {
                    config_maps.insert(
                        name.to_string(),
                        string_map(at(&value, &["data"])).into_iter().collect(),
                    );
                }
                objects.push(Object {
                    file: file.clone(),
                    kind: kind.to_string(),
                    name: name.to_string(),
                    value,
                });
            }
        }
        let mut seen = BTreeSet::new();
        for o in &objects {
            ensure!(
                seen.insert((o.kind.clone(), o.name.clone())),
                "two objects are {}",
                o.what()
            );
        }
        Ok(Manifests {
            objects,
            config_maps,
        })
    }

    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Object> + 'a {
        self.objects.iter().filter(move |o| o.kind == kind)
    }

    /// StatefulSets and Deployments: what makes pods.
    fn workloads(&self) -> impl Iterator<Item = &Object> {
        self.objects
            .iter()
            .filter(|o| o.kind == "StatefulSet" || o.kind == "Deployment")
    }

    fn object(&self, kind: &str, name: &str) -> Option<&Object> {
        self.objects
            .iter()
            .find(|o| o.kind == kind && o.name == name)
    }
}

fn pod_labels(workload: &Object) -> BTreeMap<String, String> {
    string_map(at(
        &workload.value,
        &["spec", "template", "metadata", "labels"],
    ))
}

fn containers(workload: &Object) -> &[Value] {
    seq_at(&workload.value, &["spec", "template", "spec", "containers"])
}

/// The role a container runs (`metastore`, `distributor`, `edge`), from its first argument.
fn container_role(container: &Value) -> Option<&str> {
    let first = seq_at(container, &["args"]).first()?.as_str()?;
    ROLES.into_iter().find(|r| *r == first)
}

/// A container's ports: name → (number, protocol).
fn container_ports(container: &Value) -> Result<BTreeMap<String, (u16, String)>> {
    let mut ports = BTreeMap::new();
    for port in seq_at(container, &["ports"]) {
        let number = at(port, &["containerPort"])
            .and_then(Value::as_u64)
            .context("a port without containerPort")?;
        let name = str_at(port, &["name"]).context("a port without a name")?;
        let protocol = str_at(port, &["protocol"]).unwrap_or("TCP").to_string();
        ensure!(
            ports
                .insert(name.to_string(), (u16::try_from(number)?, protocol))
                .is_none(),
            "port {name} twice"
        );
    }
    Ok(ports)
}

/// A probe's or Service's port (a name or a number) among a container's ports.
fn find_port<'a>(
    ports: &'a BTreeMap<String, (u16, String)>,
    port: &Value,
) -> Option<&'a (u16, String)> {
    match port {
        Value::String(name) => ports.get(name),
        Value::Number(n) => ports
            .values()
            .find(|(p, _)| Some(u64::from(*p)) == n.as_u64()),
        _ => None,
    }
}

/// The config file a node container runs with (`--config PATH`).
fn config_arg(container: &Value) -> Option<String> {
    let args: Vec<&str> = seq_at(container, &["args"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    args.windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1].to_string())
}

/// The port a role's config binds its HTTP listener (metrics, health) to.
fn http_port_of(role: &str, config_text: &str) -> Result<u16> {
    let table: toml::Table = toml::from_str(config_text)?;
    let key = if role == "edge" {
        "ws_listen"
    } else {
        "metrics_listen"
    };
    let addr = table
        .get(role)
        .and_then(|t| t.get(key))
        .and_then(|v| v.as_str())
        .with_context(|| format!("{role}: no {key} in its config file"))?;
    Ok(host_port(addr)?.1)
}

/// The ConfigMap content a container's `--config` path is mounted from.
fn config_text_of(m: &Manifests, workload: &Object, container: &Value) -> Result<String> {
    let path = config_arg(container).context("no --config")?;
    for mount in seq_at(container, &["volumeMounts"]) {
        let mount_path = str_at(mount, &["mountPath"]).unwrap_or_default();
        let Some(key) = path
            .strip_prefix(mount_path)
            .and_then(|rest| rest.strip_prefix('/'))
        else {
            continue;
        };
        let volume_name = str_at(mount, &["name"]).unwrap_or_default();
        let volume = seq_at(&workload.value, &["spec", "template", "spec", "volumes"])
            .iter()
            .find(|v| str_at(v, &["name"]) == Some(volume_name))
            .with_context(|| format!("volume {volume_name}"))?;
        let cm = str_at(volume, &["configMap", "name"])
            .with_context(|| format!("{path} is not on a ConfigMap"))?;
        return m
            .config_maps
            .get(cm)
            .and_then(|data| data.get(key))
            .cloned()
            .with_context(|| format!("ConfigMap {cm} has no key {key}"));
    }
    bail!("--config {path} is on no mounted volume")
}

#[test]
fn every_yaml_document_parses_and_every_object_is_named() -> Result<()> {
    let files = files_under(&deploy_dir(), &["yaml", "yml"])?;
    ensure!(files.len() >= 6, "deploy/ has only {files:?}");
    let mut documents = 0;
    for file in &files {
        documents += yaml_documents(file)?.len();
    }
    let m = Manifests::load()?;
    for kind in [
        "Namespace",
        "StatefulSet",
        "Service",
        "PodDisruptionBudget",
        "Deployment",
    ] {
        ensure!(m.of_kind(kind).count() > 0, "no {kind} in deploy/k8s");
    }
    ensure!(documents > m.objects.len(), "{documents} documents");
    Ok(())
}

#[test]
fn probes_and_services_reach_ports_the_containers_declare() -> Result<()> {
    let m = Manifests::load()?;
    for w in m.workloads() {
        for c in containers(w) {
            let cname = str_at(c, &["name"]).unwrap_or("?");
            let what = format!("{} container {cname}", w.what());
            let ports = container_ports(c).with_context(|| what.clone())?;
            for (probe, path) in [
                ("readinessProbe", "/readyz"),
                ("livenessProbe", "/healthz"),
                ("startupProbe", "/healthz"),
            ] {
                let Some(p) = at(c, &[probe]) else {
                    ensure!(probe == "startupProbe", "{what}: no {probe}");
                    continue;
                };
                let (port, http) = if let Some(get) = at(p, &["httpGet"]) {
                    ensure!(
                        str_at(get, &["path"]) == Some(path),
                        "{what}: {probe} must GET {path}"
                    );
                    (at(get, &["port"]), true)
                } else {
                    (at(p, &["tcpSocket", "port"]), false)
                };
                let port = port.with_context(|| format!("{what}: {probe} has no port"))?;
                let (number, protocol) = find_port(&ports, port)
                    .with_context(|| format!("{what}: {probe} port {port:?} is not declared"))?;
                ensure!(protocol == "TCP", "{what}: {probe} on a {protocol} port");
                if let Some(role) = container_role(c) {
                    // A node's probes are HTTP, at the port its config file binds.
                    ensure!(http, "{what}: {probe} must be an httpGet");
                    let text = config_text_of(&m, w, c).with_context(|| what.clone())?;
                    let bound = http_port_of(role, &text)?;
                    ensure!(
                        *number == bound,
                        "{what}: {probe} on {number}, the config binds HTTP to {bound}"
                    );
                }
            }
        }
    }
    // Every Service selects pods, and each of its ports is a port those pods declare.
    for s in m.of_kind("Service") {
        let selector = string_map(at(&s.value, &["spec", "selector"]));
        let selected: Vec<&Object> = m
            .workloads()
            .filter(|w| selects(&selector, &pod_labels(w)))
            .collect();
        ensure!(!selected.is_empty(), "{} selects no pods", s.what());
        for port in seq_at(&s.value, &["spec", "ports"]) {
            let target = at(port, &["targetPort"])
                .or_else(|| at(port, &["port"]))
                .context("a Service port without a port")?;
            let protocol = str_at(port, &["protocol"]).unwrap_or("TCP");
            for w in &selected {
                let found = containers(w).iter().any(|c| {
                    container_ports(c).is_ok_and(|ports| {
                        find_port(&ports, target).is_some_and(|(_, p)| p == protocol)
                    })
                });
                ensure!(
                    found,
                    "{}: port {target:?}/{protocol} is not a port of {}",
                    s.what(),
                    w.what()
                );
            }
        }
    }
    Ok(())
}

#[test]
fn statefulsets_have_headless_services_and_budgets_select_real_pods() -> Result<()> {
    let m = Manifests::load()?;
    for w in m.workloads() {
        let selector = string_map(at(&w.value, &["spec", "selector", "matchLabels"]));
        ensure!(
            selects(&selector, &pod_labels(w)),
            "{}: its selector does not select its own pods",
            w.what()
        );
        // No two workloads' pods are selected by one workload.
        for other in m.workloads().filter(|o| o.name != w.name) {
            ensure!(
                !selects(&selector, &pod_labels(other)),
                "{} also selects the pods of {}",
                w.what(),
                other.what()
            );
        }
        for c in containers(w) {
            let what = format!(
                "{} container {}",
                w.what(),
                str_at(c, &["name"]).unwrap_or("?")
            );
            for key in ["cpu", "memory"] {
                ensure!(
                    at(c, &["resources", "requests", key]).is_some(),
                    "{what}: no {key} request"
                );
            }
            ensure!(
                at(c, &["resources", "limits", "memory"]).is_some(),
                "{what}: no memory limit"
            );
            ensure!(
                at(c, &["securityContext", "allowPrivilegeEscalation"])
                    == Some(&Value::Bool(false)),
                "{what}: allowPrivilegeEscalation"
            );
        }
        ensure!(
            at(
                &w.value,
                &[
                    "spec",
                    "template",
                    "spec",
                    "securityContext",
                    "runAsNonRoot"
                ]
            ) == Some(&Value::Bool(true)),
            "{}: runAsNonRoot",
            w.what()
        );
        let replicas = at(&w.value, &["spec", "replicas"])
            .and_then(Value::as_u64)
            .unwrap_or(1);
        if replicas > 1 {
            let covered = m.of_kind("PodDisruptionBudget").any(|pdb| {
                selects(
                    &string_map(at(&pdb.value, &["spec", "selector", "matchLabels"])),
                    &pod_labels(w),
                )
            });
            ensure!(covered, "{}: no PodDisruptionBudget", w.what());
        }
    }
    for pdb in m.of_kind("PodDisruptionBudget") {
        let selector = string_map(at(&pdb.value, &["spec", "selector", "matchLabels"]));
        ensure!(
            m.workloads().any(|w| selects(&selector, &pod_labels(w))),
            "{} selects no pods",
            pdb.what()
        );
        ensure!(
            at(&pdb.value, &["spec", "maxUnavailable"]).and_then(Value::as_u64) == Some(1),
            "{}: one pod at a time",
            pdb.what()
        );
    }
    for sts in m.of_kind("StatefulSet") {
        let service = str_at(&sts.value, &["spec", "serviceName"])
            .with_context(|| format!("{}: no serviceName", sts.what()))?;
        let svc = m
            .object("Service", service)
            .with_context(|| format!("{}: no Service {service}", sts.what()))?;
        ensure!(
            str_at(&svc.value, &["spec", "clusterIP"]) == Some("None"),
            "{}: {service} is not headless",
            sts.what()
        );
        ensure!(
            selects(
                &string_map(at(&svc.value, &["spec", "selector"])),
                &pod_labels(sts)
            ),
            "{}: {service} does not select its pods",
            sts.what()
        );
        // Nodes dial each other by these names before they are ready.
        ensure!(
            at(&svc.value, &["spec", "publishNotReadyAddresses"]) == Some(&Value::Bool(true)),
            "{}: {service} must publish not-ready addresses",
            sts.what()
        );
        // Ids start at 1: the ordinal is the node id.
        ensure!(
            at(&sts.value, &["spec", "ordinals", "start"]).and_then(Value::as_u64) == Some(1),
            "{}: ordinals must start at 1",
            sts.what()
        );
    }
    // The metastore: 3 or 5 voters that are exactly its peers, each with its own volume,
    // started all at once (one at a time, the first could never be ready: no quorum).
    let meta = m
        .object("StatefulSet", "metastore")
        .context("no metastore")?;
    let replicas = at(&meta.value, &["spec", "replicas"]).and_then(Value::as_u64);
    ensure!(
        matches!(replicas, Some(3 | 5)),
        "metastore replicas {replicas:?}"
    );
    ensure!(
        str_at(&meta.value, &["spec", "podManagementPolicy"]) == Some("Parallel"),
        "the metastore's pods must start in parallel"
    );
    let claims: Vec<&str> = seq_at(&meta.value, &["spec", "volumeClaimTemplates"])
        .iter()
        .filter_map(|c| str_at(c, &["metadata", "name"]))
        .collect();
    ensure!(!claims.is_empty(), "metastore: no volumeClaimTemplates");
    let container = containers(meta)
        .first()
        .context("metastore: no container")?;
    let text = config_text_of(&m, meta, container)?;
    let config: toml::Table = toml::from_str(&text)?;
    let data_dir = config["metastore"]["data_dir"]
        .as_str()
        .context("data_dir")?;
    let on_claim = seq_at(container, &["volumeMounts"]).iter().any(|mount| {
        claims.contains(&str_at(mount, &["name"]).unwrap_or_default())
            && str_at(mount, &["mountPath"]).is_some_and(|p| data_dir.starts_with(p))
    });
    ensure!(
        on_claim,
        "metastore data_dir {data_dir} is not on its claim"
    );
    let peers = config["metastore"]["peers"]
        .as_table()
        .context("metastore peers")?;
    let ids: BTreeSet<u64> = peers.keys().map(|k| k.parse()).collect::<Result<_, _>>()?;
    ensure!(
        ids == (1..=replicas.unwrap()).collect(),
        "metastore peers {ids:?} are not the pods 1..={replicas:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Files laid out as a container sees them, and `firetower config check`

/// Container paths mapped to directories (or files) of the test: the container's mounts.
#[derive(Default)]
struct Mounts(Vec<(String, PathBuf)>);

impl Mounts {
    fn add(&mut self, container_path: &str, host: PathBuf) {
        self.0
            .push((container_path.trim_end_matches('/').to_string(), host));
        // Longest first, so a nested mount wins over its parent.
        self.0.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    }

    /// `path` inside the container as a path of the test, if it is on a mount.
    fn host(&self, path: &str) -> Option<PathBuf> {
        self.0.iter().find_map(|(mount, host)| {
            if path == mount {
                Some(host.clone())
            } else {
                path.strip_prefix(mount.as_str())
                    .and_then(|rest| rest.strip_prefix('/'))
                    .map(|rest| host.join(rest))
            }
        })
    }

    /// A value that is a container path on a mount, as the test's path; any other value
    /// as it is.
    fn rewrite(&self, value: &str) -> String {
        match value.starts_with('/').then(|| self.host(value)).flatten() {
            Some(host) => host.to_string_lossy().into_owned(),
            None => value.to_string(),
        }
    }

    /// A config file with every string value that is a container path on a mount
    /// replaced by the test's path.
    fn rewrite_toml(&self, text: &str) -> Result<String> {
        fn walk(mounts: &Mounts, value: &mut toml::Value) {
            match value {
                toml::Value::String(s) => *s = mounts.rewrite(s),
                toml::Value::Array(items) => items.iter_mut().for_each(|v| walk(mounts, v)),
                toml::Value::Table(t) => t.iter_mut().for_each(|(_, v)| walk(mounts, v)),
                _ => {}
            }
        }
        let mut table: toml::Value = toml::Value::Table(toml::from_str(text)?);
        walk(self, &mut table);
        Ok(toml::to_string(&table)?)
    }
}

/// Runs `firetower config check FILE` with exactly `env`, and returns the effective
/// config's role table.
fn config_check(file: &Path, env: &BTreeMap<String, String>, what: &str) -> Result<toml::Table> {
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(file)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "{what}: `firetower config check {}` failed ({}):\n{stderr}{stdout}\nenvironment: {env:#?}",
        file.display(),
        out.status
    );
    let top: toml::Table = toml::from_str(&stdout).with_context(|| {
        format!("{what}: `config check` did not print the effective config as TOML:\n{stdout}")
    })?;
    ensure!(top.len() == 1, "{what}: the effective config has {top:?}");
    let (_, table) = top.into_iter().next().unwrap();
    table.as_table().cloned().context("the role's table")
}

fn str_of<'a>(table: &'a toml::Table, path: &[&str]) -> Option<&'a str> {
    let (last, parents) = path.split_last()?;
    let mut t = table;
    for key in parents {
        t = t.get(*key)?.as_table()?;
    }
    t.get(*last)?.as_str()
}

/// What a node's effective config must say about itself: its id, the certificate of that
/// id (existing, as every file it names), the API keys where the role takes them, and the
/// address others dial it at (`expect_host`).
fn check_effective(
    role: &str,
    id: u64,
    config: &toml::Table,
    expect_host: &str,
    what: &str,
) -> Result<()> {
    let got_id = config.get("id").and_then(|v| v.as_integer());
    ensure!(
        got_id == Some(id as i64),
        "{what}: effective id {got_id:?}, expected {id}"
    );
    for (path, file_name) in [
        (&["tls", "cert"][..], Some(format!("{role}-{id}.crt"))),
        (&["tls", "key"][..], Some(format!("{role}-{id}.key"))),
        (&["tls", "ca"][..], Some("ca.crt".to_string())),
        (&["member_key_file"][..], None),
        (&["api", "member_key_file"][..], None),
        (&["auth", "jwt_hs256_key_file"][..], None),
        (&["auth", "jwt_public_key_file"][..], None),
    ] {
        let Some(file) = str_of(config, path).filter(|f| !f.is_empty()) else {
            ensure!(
                file_name.is_none(),
                "{what}: no {} in the effective config",
                path.join(".")
            );
            continue;
        };
        let file = Path::new(file);
        ensure!(
            file.is_file(),
            "{what}: {} = {} does not exist in the pod",
            path.join("."),
            file.display()
        );
        if let Some(name) = file_name {
            ensure!(
                file.file_name() == Some(std::ffi::OsStr::new(&name)),
                "{what}: {} is {}, not the node's own {name}",
                path.join("."),
                file.display()
            );
        }
    }
    if role != "edge" {
        let keys = config
            .get("api")
            .and_then(|a| a.get("keys"))
            .and_then(|k| k.as_array())
            .map_or(0, Vec::len);
        ensure!(
            keys == 2,
            "{what}: {keys} API keys, expected backend and cluster"
        );
    }
    let advertised: Vec<String> = match role {
        "metastore" => {
            let me = str_of(config, &["peers", &id.to_string()])
                .with_context(|| format!("{what}: not among its peers"))?;
            vec![me.to_string()]
        }
        "distributor" => ["grpc_advertise", "quic_advertise", "metrics_advertise"]
            .iter()
            .map(|k| str_of(config, &[k]).unwrap_or_default().to_string())
            .collect(),
        _ => vec![str_of(config, &["ws_advertise"])
            .unwrap_or_default()
            .to_string()],
    };
    for addr in advertised {
        ensure!(
            host_port(&addr)?.0 == expect_host,
            "{what}: advertises {addr}, others reach it at {expect_host}"
        );
    }
    Ok(())
}

/// The metastore addresses a node's effective config dials: its peers, or its
/// `metastore` list.
fn metastore_addresses(role: &str, config: &toml::Table) -> Result<Vec<String>> {
    let values: Vec<&toml::Value> = if role == "metastore" {
        config
            .get("peers")
            .and_then(|p| p.as_table())
            .context("no peers")?
            .values()
            .collect()
    } else {
        config
            .get("metastore")
            .and_then(|p| p.as_array())
            .context("no metastore list")?
            .iter()
            .collect()
    };
    values
        .into_iter()
        .map(|v| v.as_str().map(String::from).context("an address"))
        .collect()
}

/// Runs deploy/material.sh; returns its output directory.
fn make_material(
    dir: &Path,
    k8s: bool,
    metastores: u64,
    distributors: u64,
    edges: u64,
) -> Result<PathBuf> {
    let out = dir.join("material");
    let mut cmd = Command::new("sh");
    cmd.arg(deploy_dir().join("material.sh"));
    if k8s {
        cmd.args(["--k8s", NAMESPACE]);
    }
    let output = cmd
        .arg(&out)
        .args([
            metastores.to_string(),
            distributors.to_string(),
            edges.to_string(),
        ])
        .env("FIRETOWER", BIN)
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        output.status.success(),
        "deploy/material.sh failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(out)
}

/// The Secrets material.sh made for Kubernetes: name → key → bytes.
fn generated_secrets(material: &Path) -> Result<BTreeMap<String, BTreeMap<String, Vec<u8>>>> {
    let mut secrets = BTreeMap::new();
    for doc in yaml_documents(&material.join("k8s-secrets.yaml"))? {
        ensure!(str_at(&doc, &["kind"]) == Some("Secret"), "{doc:?}");
        ensure!(str_at(&doc, &["metadata", "namespace"]) == Some(NAMESPACE));
        let name = str_at(&doc, &["metadata", "name"]).context("a Secret's name")?;
        let mut data = BTreeMap::new();
        for (key, value) in string_map(at(&doc, &["data"])) {
            data.insert(key, base64_decode(&value)?);
        }
        secrets.insert(name.to_string(), data);
    }
    Ok(secrets)
}

/// CPU quantity ("500m", "2") in whole cores, rounded up (a resourceFieldRef, divisor 1).
fn cores(quantity: &str) -> Result<u64> {
    Ok(match quantity.strip_suffix('m') {
        Some(milli) => milli.parse::<u64>()?.div_ceil(1000),
        None => quantity.parse::<f64>()?.ceil() as u64,
    })
}

/// Expands `$(NAME)` with the variables defined so far, as the kubelet does.
fn expand(value: &str, env: &BTreeMap<String, String>) -> Result<String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("$(") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find(')')
            .with_context(|| format!("{value:?}: an unclosed $("))?;
        let name = &rest[start + 2..start + end];
        let resolved = env
            .get(name)
            .with_context(|| format!("{value:?}: $({name}) is not defined before it"))?;
        out.push_str(resolved);
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// One pod of a workload: its name and, for a StatefulSet, its ordinal.
struct Pod {
    name: String,
    ordinal: Option<u64>,
}

fn pods_of(w: &Object) -> Vec<Pod> {
    let replicas = at(&w.value, &["spec", "replicas"])
        .and_then(Value::as_u64)
        .unwrap_or(1);
    if w.kind == "StatefulSet" {
        let start = at(&w.value, &["spec", "ordinals", "start"])
            .and_then(Value::as_u64)
            .unwrap_or(0);
        (start..start + replicas)
            .map(|i| Pod {
                name: format!("{}-{i}", w.name),
                ordinal: Some(i),
            })
            .collect()
    } else {
        vec![Pod {
            name: format!("{}-0", w.name),
            ordinal: None,
        }]
    }
}

/// A container's environment in one pod, as the kubelet resolves it.
fn pod_env(
    m: &Manifests,
    secrets: &BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    w: &Object,
    pod: &Pod,
    container: &Value,
) -> Result<BTreeMap<String, String>> {
    let labels = pod_labels(w);
    let mut env = BTreeMap::new();
    for var in seq_at(container, &["env"]) {
        let name = str_at(var, &["name"]).context("an env var without a name")?;
        let value = if let Some(value) = at(var, &["value"]) {
            expand(&scalar(value).context("value")?, &env)?
        } else if let Some(field) = str_at(var, &["valueFrom", "fieldRef", "fieldPath"]) {
            match field {
                "metadata.name" => pod.name.clone(),
                "metadata.namespace" => NAMESPACE.to_string(),
                "metadata.labels['apps.kubernetes.io/pod-index']" => pod
                    .ordinal
                    .with_context(|| format!("{name}: a pod index outside a StatefulSet"))?
                    .to_string(),
                other => {
                    let label = other
                        .strip_prefix("metadata.labels['")
                        .and_then(|l| l.strip_suffix("']"))
                        .with_context(|| format!("{name}: fieldRef {other} is not modelled"))?;
                    labels
                        .get(label)
                        .cloned()
                        .with_context(|| format!("{name}: no label {label}"))?
                }
            }
        } else if let Some(r) = at(var, &["valueFrom", "secretKeyRef"]) {
            let (secret, key) = (str_at(r, &["name"]), str_at(r, &["key"]));
            let bytes = secrets
                .get(secret.unwrap_or_default())
                .and_then(|s| s.get(key.unwrap_or_default()))
                .with_context(|| format!("{name}: no Secret {secret:?} key {key:?}"))?;
            String::from_utf8(bytes.clone())?
        } else if let Some(r) = at(var, &["valueFrom", "configMapKeyRef"]) {
            let (cm, key) = (str_at(r, &["name"]), str_at(r, &["key"]));
            m.config_maps
                .get(cm.unwrap_or_default())
                .and_then(|c| c.get(key.unwrap_or_default()))
                .cloned()
                .with_context(|| format!("{name}: no ConfigMap {cm:?} key {key:?}"))?
        } else if let Some(r) = at(var, &["valueFrom", "resourceFieldRef"]) {
            let resource = str_at(r, &["resource"]).unwrap_or_default();
            let (kind, what) = resource
                .split_once('.')
                .with_context(|| format!("{name}: resource {resource:?}"))?;
            let quantity = at(container, &["resources", kind, what])
                .and_then(scalar)
                .with_context(|| format!("{name}: the container has no {resource}"))?;
            ensure!(
                at(r, &["divisor"]).and_then(scalar).as_deref() == Some("1"),
                "{name}: divisor"
            );
            ensure!(what == "cpu", "{name}: {resource} is not modelled");
            cores(&quantity)?.to_string()
        } else {
            bail!("{name}: a value source that is not modelled")
        };
        env.insert(name.to_string(), value);
    }
    Ok(env)
}

/// Lays out a container's volumes under `dir` (ConfigMaps and Secrets as files, claims and
/// emptyDirs as empty directories), with container paths in ConfigMap files rewritten.
fn lay_out_volumes(
    m: &Manifests,
    secrets: &BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    w: &Object,
    container: &Value,
    dir: &Path,
) -> Result<Mounts> {
    let volumes = seq_at(&w.value, &["spec", "template", "spec", "volumes"]);
    let claims: Vec<&str> = seq_at(&w.value, &["spec", "volumeClaimTemplates"])
        .iter()
        .filter_map(|c| str_at(c, &["metadata", "name"]))
        .collect();
    let mut mounts = Mounts::default();
    let mut config_files: Vec<(PathBuf, String)> = Vec::new();
    for mount in seq_at(container, &["volumeMounts"]) {
        let name = str_at(mount, &["name"]).context("a mount without a name")?;
        let path = str_at(mount, &["mountPath"]).context("a mount without a path")?;
        let host = dir.join(format!("volume-{name}"));
        std::fs::create_dir_all(&host)?;
        if claims.contains(&name) {
            mounts.add(path, host);
            continue;
        }
        let volume = volumes
            .iter()
            .find(|v| str_at(v, &["name"]) == Some(name))
            .with_context(|| format!("mount {name}: no such volume"))?;
        // (key → path in the volume) of the items, or every key.
        let items = |keys: Vec<String>| -> Result<Vec<(String, String)>> {
            let items = seq_at(volume, &[volume_kind(volume), "items"]);
            if items.is_empty() {
                return Ok(keys.into_iter().map(|k| (k.clone(), k)).collect());
            }
            items
                .iter()
                .map(|item| {
                    let key = str_at(item, &["key"]).context("an item without a key")?;
                    ensure!(
                        keys.iter().any(|k| k == key),
                        "volume {name}: no key {key} in its source"
                    );
                    let path = str_at(item, &["path"]).unwrap_or(key);
                    Ok((key.to_string(), path.to_string()))
                })
                .collect()
        };
        if let Some(cm) = str_at(volume, &["configMap", "name"]) {
            let data = m
                .config_maps
                .get(cm)
                .with_context(|| format!("volume {name}: no ConfigMap {cm}"))?;
            for (key, file) in items(data.keys().cloned().collect())? {
                config_files.push((host.join(file), data[&key].clone()));
            }
        } else if let Some(secret) = str_at(volume, &["secret", "secretName"]) {
            let data = secrets.get(secret).with_context(|| {
                format!("volume {name}: deploy/material.sh makes no Secret {secret}")
            })?;
            for (key, file) in items(data.keys().cloned().collect())? {
                std::fs::write(host.join(file), &data[&key])?;
            }
        } else {
            ensure!(
                at(volume, &["emptyDir"]).is_some(),
                "volume {name}: a kind that is not modelled"
            );
        }
        mounts.add(path, host);
    }
    for (file, text) in config_files {
        let text = if file.extension().is_some_and(|e| e == "toml") {
            mounts.rewrite_toml(&text)?
        } else {
            text
        };
        std::fs::write(file, text)?;
    }
    Ok(mounts)
}

fn volume_kind(volume: &Value) -> &'static str {
    if at(volume, &["configMap"]).is_some() {
        "configMap"
    } else {
        "secret"
    }
}

#[test]
fn every_pod_passes_config_check_with_its_environment_and_volumes() -> Result<()> {
    let m = Manifests::load()?;
    let replicas = |name: &str| -> Result<u64> {
        let sts = m
            .object("StatefulSet", name)
            .with_context(|| format!("no StatefulSet {name}"))?;
        at(&sts.value, &["spec", "replicas"])
            .and_then(Value::as_u64)
            .context("replicas")
    };
    let tmp = tempfile::tempdir()?;
    let material = make_material(
        tmp.path(),
        true,
        replicas("metastore")?,
        replicas("distributor")?,
        replicas("edge")?,
    )?;
    let secrets = generated_secrets(&material)?;
    // Every ConfigMap file is some pod's config.
    let mut unchecked: BTreeSet<String> = m
        .config_maps
        .values()
        .flat_map(|data| data.keys().filter(|k| k.ends_with(".toml")).cloned())
        .collect();
    // The addresses of the metastore pods (their stable names, the gRPC port).
    let metastore = m.object("StatefulSet", "metastore").context("metastore")?;
    let meta_service = str_at(&metastore.value, &["spec", "serviceName"]).unwrap_or_default();
    let meta_pods: BTreeSet<String> = pods_of(metastore)
        .into_iter()
        .map(|p| format!("{}.{meta_service}:7101", p.name))
        .collect();
    let mut checked = 0;
    for w in m.workloads() {
        for pod in pods_of(w) {
            for c in containers(w) {
                let what = format!(
                    "pod {} container {}",
                    pod.name,
                    str_at(c, &["name"]).unwrap_or("?")
                );
                let dir = tmp.path().join(&pod.name);
                let mounts =
                    lay_out_volumes(&m, &secrets, w, c, &dir).with_context(|| what.clone())?;
                let env = pod_env(&m, &secrets, w, &pod, c).with_context(|| what.clone())?;
                // Every file a container names (in an argument or a variable) is on a mount.
                let args: Vec<String> = seq_at(c, &["args"])
                    .iter()
                    .filter_map(|a| a.as_str().map(String::from))
                    .collect();
                for text in args.iter().chain(env.values()) {
                    if text.starts_with('/') {
                        let host = mounts
                            .host(text)
                            .with_context(|| format!("{what}: {text} is on no volume"))?;
                        ensure!(host.exists(), "{what}: {text} does not exist in the pod");
                    }
                }
                // A tool's `--metastore` list (the dashboard) names the metastore pods too.
                if let Some(list) = args.windows(2).find(|w| w[0] == "--metastore") {
                    let named: BTreeSet<String> = list[1].split(',').map(String::from).collect();
                    ensure!(
                        named == meta_pods,
                        "{what}: --metastore {named:?}, the metastore pods are {meta_pods:?}"
                    );
                }
                let Some(role) = container_role(c) else {
                    continue;
                };
                let config = config_arg(c).with_context(|| format!("{what}: no --config"))?;
                let file = mounts.host(&config).context("--config")?;
                unchecked.remove(&file.file_name().unwrap().to_string_lossy().to_string());
                let env: BTreeMap<String, String> = env
                    .into_iter()
                    .filter(|(k, _)| k.starts_with("FIRETOWER_"))
                    .map(|(k, v)| {
                        let v = mounts.rewrite(&v);
                        (k, v)
                    })
                    .collect();
                let effective = config_check(&file, &env, &what)?;
                let id = pod.ordinal.context("a node outside a StatefulSet")?;
                let service = str_at(&w.value, &["spec", "serviceName"]).unwrap_or_default();
                check_effective(
                    role,
                    id,
                    &effective,
                    &format!("{}.{service}", pod.name),
                    &what,
                )?;
                // The metastore addresses it dials are the metastore pods' names.
                let dialled: BTreeSet<String> =
                    metastore_addresses(role, &effective)?.into_iter().collect();
                ensure!(
                    dialled == meta_pods,
                    "{what}: dials the metastore at {dialled:?}, its pods are {meta_pods:?}"
                );
                checked += 1;
            }
        }
    }
    ensure!(
        unchecked.is_empty(),
        "config files no pod runs: {unchecked:?}"
    );
    ensure!(checked >= 9, "only {checked} pods checked");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The compose file

struct Compose {
    dir: PathBuf,
    services: BTreeMap<String, Value>,
    volumes: BTreeSet<String>,
}

impl Compose {
    fn load() -> Result<Self> {
        let file = compose_file();
        let doc = yaml_documents(&file)?
            .pop()
            .context("the compose file is empty")?;
        let services = at(&doc, &["services"])
            .and_then(Value::as_mapping)
            .context("services")?
            .iter()
            .map(|(k, v)| Ok((k.as_str().context("a service name")?.to_string(), v.clone())))
            .collect::<Result<_>>()?;
        let volumes = at(&doc, &["volumes"])
            .and_then(Value::as_mapping)
            .map(|m| {
                m.keys()
                    .filter_map(|k| k.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Compose {
            dir: file.parent().unwrap().to_path_buf(),
            services,
            volumes,
        })
    }

    /// A service's arguments to the binary (`command`).
    fn command(service: &Value) -> Vec<String> {
        seq_at(service, &["command"])
            .iter()
            .filter_map(|a| a.as_str().map(String::from))
            .collect()
    }

    /// `(source, target)` of each volume entry (`SOURCE:TARGET[:ro]`).
    fn volumes(service: &Value) -> Result<Vec<(String, String)>> {
        seq_at(service, &["volumes"])
            .iter()
            .map(|v| {
                let v = v
                    .as_str()
                    .context("a volume entry that is not SOURCE:TARGET")?;
                let mut parts = v.split(':');
                let (Some(source), Some(target)) = (parts.next(), parts.next()) else {
                    bail!("volume {v:?}");
                };
                Ok((source.to_string(), target.to_string()))
            })
            .collect()
    }

    fn environment(service: &Value) -> Result<BTreeMap<String, String>> {
        let mut env = BTreeMap::new();
        match at(service, &["environment"]) {
            None => {}
            Some(Value::Mapping(map)) => {
                for (k, v) in map {
                    env.insert(
                        k.as_str().context("a variable name")?.to_string(),
                        scalar(v).context("a variable's value")?,
                    );
                }
            }
            Some(Value::Sequence(list)) => {
                for item in list {
                    let (k, v) = item
                        .as_str()
                        .and_then(|i| i.split_once('='))
                        .context("NAME=VALUE")?;
                    env.insert(k.to_string(), v.to_string());
                }
            }
            Some(other) => bail!("environment {other:?}"),
        }
        Ok(env)
    }

    /// The variable a service's shell entrypoint exports from a file:
    /// `export NAME="$$(cat PATH)" && exec firetower "$$@"`.
    fn exported_file(service: &Value) -> Result<Option<(String, String)>> {
        let entry: Vec<&str> = seq_at(service, &["entrypoint"])
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let Some(script) = entry
            .windows(2)
            .find(|w| w[0] == "-c")
            .map(|w| w[1])
            .filter(|s| s.contains("export "))
        else {
            return Ok(None);
        };
        ensure!(
            script.trim_end().ends_with("exec firetower \"$$@\""),
            "the entrypoint must hand its arguments to firetower: {script}"
        );
        let rest = script.split_once("export ").unwrap().1;
        let (name, rest) = rest.split_once('=').context("export NAME=")?;
        let path = rest
            .strip_prefix("\"$$(cat ")
            .and_then(|r| r.split_once(")\""))
            .map(|(p, _)| p)
            .with_context(|| format!("export {name}: expected \"$$(cat PATH)\""))?;
        Ok(Some((name.to_string(), path.to_string())))
    }
}

#[test]
fn compose_services_reference_what_exists_and_start_after_certs() -> Result<()> {
    let compose = Compose::load()?;
    let certs = compose.services.get("certs").context("no certs service")?;
    let certs_args = Compose::command(certs);
    ensure!(
        at(certs, &["restart"]).and_then(Value::as_str) == Some("no"),
        "certs runs once"
    );
    let mut used_configs = BTreeSet::new();
    let mut host_ports = BTreeSet::new();
    for (name, service) in &compose.services {
        for (source, target) in Compose::volumes(service)? {
            if source.starts_with('.') || source.starts_with('/') {
                let path = compose.dir.join(&source);
                ensure!(path.exists(), "{name}: {source} does not exist");
            } else {
                ensure!(
                    compose.volumes.contains(&source),
                    "{name}: volume {source} is not declared"
                );
            }
            ensure!(target.starts_with('/'), "{name}: mount target {target}");
        }
        if let Some(deps) = at(service, &["depends_on"]).and_then(Value::as_mapping) {
            for dep in deps.keys().filter_map(Value::as_str) {
                ensure!(
                    compose.services.contains_key(dep),
                    "{name} depends on {dep}"
                );
            }
        }
        for port in seq_at(service, &["ports"]) {
            let port = port.as_str().context("ports as strings")?;
            let parts: Vec<&str> = port.split(':').collect();
            ensure!(parts.len() == 3, "{name}: {port} (bind to an address)");
            ensure!(
                host_ports.insert(format!("{}:{}", parts[0], parts[1])),
                "{name}: host port {port} twice"
            );
        }
        if name == "certs" {
            continue;
        }
        // Every other service waits for the material.
        let condition = str_at(service, &["depends_on", "certs", "condition"]);
        ensure!(
            condition == Some("service_completed_successfully"),
            "{name}: must start after certs succeeded, not {condition:?}"
        );
        let command = Compose::command(service);
        let Some(role) = command.first().filter(|r| ROLES.contains(&r.as_str())) else {
            continue;
        };
        let config = command
            .windows(2)
            .find(|w| w[0] == "--config")
            .map(|w| w[1].clone())
            .with_context(|| format!("{name}: no --config"))?;
        let mut mounts = Mounts::default();
        for (source, target) in Compose::volumes(service)? {
            mounts.add(&target, compose.dir.join(source));
        }
        let file = mounts
            .host(&config)
            .with_context(|| format!("{name}: {config} is on no volume"))?;
        ensure!(
            file.is_file(),
            "{name}: {config} is {}, not a file",
            file.display()
        );
        let text = std::fs::read_to_string(&file)?;
        used_configs.insert(file.canonicalize()?);
        // Its healthcheck asks the role's /readyz at the port the config binds.
        let test: Vec<&str> = seq_at(service, &["healthcheck", "test"])
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let probe = test.join(" ");
        let port = http_port_of(role, &text)?;
        ensure!(
            probe.contains(&format!("/dev/tcp/127.0.0.1/{port} "))
                && probe.contains("GET /readyz "),
            "{name}: healthcheck {probe:?} must GET /readyz on {port}"
        );
        // The ids of certs' material: at least this node's.
        let count: u64 = match role.as_str() {
            "metastore" => certs_args[certs_args.len() - 3].parse()?,
            "distributor" => certs_args[certs_args.len() - 2].parse()?,
            _ => certs_args[certs_args.len() - 1].parse()?,
        };
        let id: u64 = Compose::environment(service)?
            .get(&format!("FIRETOWER_{}__ID", role.to_ascii_uppercase()))
            .with_context(|| format!("{name}: no id"))?
            .parse()?;
        ensure!(
            (1..=count).contains(&id),
            "{name}: id {id}, certs makes 1..={count}"
        );
    }
    let configs: BTreeSet<PathBuf> = files_under(&compose.dir.join("config"), &["toml"])?
        .into_iter()
        .map(|p| p.canonicalize())
        .collect::<Result<_, _>>()?;
    ensure!(
        configs == used_configs,
        "config files {configs:?}, used {used_configs:?}"
    );
    Ok(())
}

#[test]
fn every_compose_node_passes_config_check_with_its_environment() -> Result<()> {
    let compose = Compose::load()?;
    let certs = Compose::command(&compose.services["certs"]);
    let counts: Vec<u64> = certs[certs.len() - 3..]
        .iter()
        .map(|n| n.parse())
        .collect::<Result<_, _>>()?;
    let tmp = tempfile::tempdir()?;
    let material = make_material(tmp.path(), false, counts[0], counts[1], counts[2])?;
    let mut ids: BTreeSet<(String, u64)> = BTreeSet::new();
    let mut checked = 0;
    for (name, service) in &compose.services {
        let command = Compose::command(service);
        let Some(role) = command.first().filter(|r| ROLES.contains(&r.as_str())) else {
            continue;
        };
        let what = format!("compose service {name}");
        let dir = tmp.path().join(name);
        let mut mounts = Mounts::default();
        let mut configs = Vec::new();
        for (source, target) in Compose::volumes(service)? {
            let host = if source == "material" {
                material.clone()
            } else if source.starts_with('.') {
                // The role configs: copied, so their container paths can be rewritten.
                let copy = dir.join(format!("bind-{}", configs.len()));
                std::fs::create_dir_all(&copy)?;
                configs.push((compose.dir.join(&source), copy.clone()));
                copy
            } else {
                let data = dir.join(format!("volume-{source}"));
                std::fs::create_dir_all(&data)?;
                data
            };
            mounts.add(&target, host);
        }
        for (source, copy) in &configs {
            for file in files_under(source, &["toml"])? {
                let text = std::fs::read_to_string(&file)?;
                std::fs::write(
                    copy.join(file.file_name().unwrap()),
                    mounts.rewrite_toml(&text)?,
                )?;
            }
        }
        let mut env: BTreeMap<String, String> = Compose::environment(service)?
            .into_iter()
            .filter(|(k, _)| k.starts_with("FIRETOWER_"))
            .map(|(k, v)| (k, mounts.rewrite(&v)))
            .collect();
        if let Some((var, path)) = Compose::exported_file(service)? {
            ensure!(
                var == format!("FIRETOWER_{}__API__KEYS", role.to_ascii_uppercase()),
                "{what}: exports {var}"
            );
            let file = mounts
                .host(&path)
                .with_context(|| format!("{what}: {path} is on no volume"))?;
            env.insert(var, std::fs::read_to_string(file)?);
        }
        let config = command
            .windows(2)
            .find(|w| w[0] == "--config")
            .map(|w| w[1].clone())
            .context("--config")?;
        let file = mounts.host(&config).context("--config")?;
        let effective = config_check(&file, &env, &what)?;
        let id = effective
            .get("id")
            .and_then(|v| v.as_integer())
            .context("id")? as u64;
        ensure!(
            ids.insert((role.clone(), id)),
            "{what}: {role} id {id} twice"
        );
        check_effective(role, id, &effective, name, &what)?;
        // The metastore addresses are the metastore services, at their gRPC port.
        for addr in metastore_addresses(role, &effective)? {
            let (host, port) = host_port(&addr)?;
            ensure!(
                host.starts_with("metastore-")
                    && compose
                        .services
                        .get(host)
                        .is_some_and(|s| Compose::command(s).first().map(String::as_str)
                            == Some("metastore")),
                "{what}: dials {addr}, which is no metastore service"
            );
            ensure!(
                port == 7101,
                "{what}: dials {addr}, the metastores serve 7101"
            );
        }
        checked += 1;
    }
    ensure!(
        checked == 7,
        "{checked} compose nodes checked, expected 3 + 2 + 2"
    );
    Ok(())
}
