//! One TOML file per process, environment variables over it, flags over both.
//!
//! A file holds one table named by its role (`[metastore]`, `[distributor]` or `[edge]`)
//! whose keys are the fields of that role's `Config` (docs/configuration.md). The layers,
//! each over the one before:
//!
//! 1. the role's defaults (its `Config::default()`);
//! 2. the file (`--config FILE`);
//! 3. environment variables `FIRETOWER_<ROLE>__<KEY>`, `__` between nesting levels
//!    (`FIRETOWER_EDGE__AUTH__ALLOW_ANONYMOUS=true`); a value is read as a TOML value
//!    where the key's default is not a string, else taken as it is;
//! 4. the command's flags.
//!
//! Tables merge key by key; any other value replaces the one below. The merged table is
//! deserialized once, so an unknown or mistyped key is an error that names it
//! (`edge.auth.allow_anonymus: unknown field …`), whichever layer it came from.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use toml::{Table, Value};

/// The roles that run from a config file, by their table's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Metastore,
    Distributor,
    Edge,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Metastore, Role::Distributor, Role::Edge];

    pub fn name(self) -> &'static str {
        match self {
            Role::Metastore => "metastore",
            Role::Distributor => "distributor",
            Role::Edge => "edge",
        }
    }

    /// The prefix of this role's environment variables.
    pub fn env_prefix(self) -> String {
        format!("FIRETOWER_{}__", self.name().to_ascii_uppercase())
    }
}

/// A layer that could not be read or merged, or a merged config that does not fit the
/// role's `Config`. The message names the file, variable or key.
#[derive(Debug)]
pub struct LayerError(pub String);

impl std::fmt::Display for LayerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LayerError {}

/// Reads a config file: its role (the one table it holds) and that table.
pub fn read_file(path: &Path) -> Result<(Role, Table), LayerError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| LayerError(format!("{}: {e}", path.display())))?;
    parse_file(&text).map_err(|e| LayerError(format!("{}: {}", path.display(), e.0)))
}

/// [`read_file`] on the text of a file.
pub fn parse_file(text: &str) -> Result<(Role, Table), LayerError> {
    let mut top: Table = toml::from_str(text).map_err(|e| LayerError(e.to_string()))?;
    let names: Vec<&str> = Role::ALL.iter().map(|r| r.name()).collect();
    if let Some(key) = top.keys().find(|k| !names.contains(&k.as_str())) {
        return Err(LayerError(format!(
            "unknown key `{key}`: a config file holds one table, [metastore], [distributor] or [edge]"
        )));
    }
    if top.len() != 1 {
        return Err(LayerError(
            "a config file holds exactly one table: [metastore], [distributor] or [edge]".into(),
        ));
    }
    let role = Role::ALL
        .into_iter()
        .find(|r| top.contains_key(r.name()))
        .ok_or_else(|| LayerError("no role table".into()))?;
    match top.remove(role.name()) {
        Some(Value::Table(table)) => Ok((role, table)),
        _ => Err(LayerError(format!("`{}` must be a table", role.name()))),
    }
}

/// Builds a role's config from its layers (see the module docs). `file` is the role's
/// table from the file, `env` every environment variable (those of other roles and
/// other names are left alone), `flags` the table the command's flags make.
pub fn load<T: Serialize + DeserializeOwned>(
    role: Role,
    defaults: &T,
    file: Option<Table>,
    env: impl IntoIterator<Item = (String, String)>,
    flags: Table,
) -> Result<T, LayerError> {
    // Through text: TOML keeps the integer keys of maps (the metastore's `peers`) only there.
    let text = toml::to_string(defaults).map_err(|e| LayerError(format!("defaults: {e}")))?;
    let mut merged: Table =
        toml::from_str(&text).map_err(|e| LayerError(format!("defaults: {e}")))?;
    if let Some(file) = file {
        merge(&mut merged, file);
    }
    let prefix = role.env_prefix();
    let mut env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .collect();
    env.sort();
    for (name, raw) in env {
        let path: Vec<String> = name[prefix.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(LayerError(format!("{name}: an empty key between `__`")));
        }
        let value = env_value(&merged, &path, &raw);
        set(&mut merged, &path, value).map_err(|e| LayerError(format!("{name}: {}", e.0)))?;
    }
    merge(&mut merged, flags);
    let text = toml::to_string(&merged).map_err(|e| LayerError(format!("{}: {e}", role.name())))?;
    let de = toml::Deserializer::parse(&text)
        .map_err(|e| LayerError(format!("{}: {e}", role.name())))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.message().trim().to_string();
        if path == "." || path.is_empty() {
            LayerError(format!("{}: {message}", role.name()))
        } else {
            LayerError(format!("{}.{path}: {message}", role.name()))
        }
    })
}

/// The effective config as TOML, in a file's layout (what `config check` prints).
pub fn render<T: Serialize>(role: Role, config: &T) -> Result<String, LayerError> {
    let text = toml::to_string(config).map_err(|e| LayerError(e.to_string()))?;
    let table: Table = toml::from_str(&text).map_err(|e| LayerError(e.to_string()))?;
    let top = Table::from_iter([(role.name().to_string(), Value::Table(table))]);
    toml::to_string(&top).map_err(|e| LayerError(e.to_string()))
}

/// A variable's value: as it is where the key holds a string (addresses, paths, names are
/// not TOML), else parsed as a TOML value (`true`, `3`, `["a", "b"]`), else a string.
fn env_value(merged: &Table, path: &[String], raw: &str) -> Value {
    if matches!(get(merged, path), Some(Value::String(_))) {
        return Value::String(raw.to_string());
    }
    toml::from_str::<Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

fn get<'a>(table: &'a Table, path: &[String]) -> Option<&'a Value> {
    let (last, parents) = path.split_last()?;
    let mut table = table;
    for key in parents {
        table = table.get(key)?.as_table()?;
    }
    table.get(last)
}

/// Sets `path` to `value`, making the tables on the way.
pub fn set(table: &mut Table, path: &[String], value: Value) -> Result<(), LayerError> {
    let Some((last, parents)) = path.split_last() else {
        return Err(LayerError("an empty key".into()));
    };
    let mut table = table;
    for (i, key) in parents.iter().enumerate() {
        let entry = table
            .entry(key.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| LayerError(format!("`{}` is not a table", path[..=i].join("."))))?;
    }
    table.insert(last.clone(), value);
    Ok(())
}

/// Merges `over` into `base`: tables key by key, anything else replaced.
fn merge(base: &mut Table, over: Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(below)), Value::Table(above)) => merge(below, above),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// A flag's value for the flags layer: `Some` values only.
pub fn flag<V: Into<Value>>(flags: &mut Table, path: &str, value: Option<V>) {
    if let Some(value) = value {
        let path: Vec<String> = path.split('.').map(String::from).collect();
        // The paths are the binary's own constants, tables all the way: cannot fail.
        let _ = set(flags, &path, value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Inner {
        allow: bool,
        list: Vec<String>,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        id: u64,
        addr: String,
        peers: std::collections::BTreeMap<u64, String>,
        inner: Inner,
    }

    impl Default for Sample {
        fn default() -> Self {
            Sample {
                id: 1,
                addr: "127.0.0.1:1".into(),
                peers: [(1, "a:1".to_string())].into(),
                inner: Inner {
                    allow: false,
                    list: vec![],
                },
            }
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn layers_apply_in_order_file_env_flags() {
        let (role, file) = parse_file(
            "[edge]\nid = 2\naddr = \"h:2\"\n[edge.peers]\n2 = \"b:2\"\n[edge.inner]\nlist = [\"x\"]\n",
        )
        .unwrap();
        assert_eq!(role, Role::Edge);
        let mut flags = Table::new();
        flag(&mut flags, "id", Some(4i64));
        let got: Sample = load(
            role,
            &Sample::default(),
            Some(file),
            env(&[
                ("FIRETOWER_EDGE__ID", "3"),
                ("FIRETOWER_EDGE__ADDR", "10.0.0.1:9"),
                ("FIRETOWER_EDGE__INNER__ALLOW", "true"),
                ("FIRETOWER_EDGE__PEERS__3", "c:3"),
                ("FIRETOWER_DISTRIBUTOR__ID", "nonsense"),
                ("FIRETOWER_CA_FILE", "/elsewhere"),
            ]),
            flags,
        )
        .unwrap();
        assert_eq!(
            got,
            Sample {
                id: 4,
                addr: "10.0.0.1:9".into(),
                peers: [(1, "a:1".into()), (2, "b:2".into()), (3, "c:3".into())].into(),
                inner: Inner {
                    allow: true,
                    list: vec!["x".into()],
                },
            }
        );
    }

    #[test]
    fn an_unknown_key_is_named_whichever_layer_brought_it() {
        let (role, file) = parse_file("[edge]\n[edge.inner]\nallw = true\n").unwrap();
        let err = load::<Sample>(role, &Sample::default(), Some(file), [], Table::new())
            .unwrap_err()
            .0;
        assert!(
            err.starts_with("edge.inner.allw: unknown field `allw`"),
            "{err}"
        );
        let err = load::<Sample>(
            Role::Edge,
            &Sample::default(),
            None,
            env(&[("FIRETOWER_EDGE__IDD", "1")]),
            Table::new(),
        )
        .unwrap_err()
        .0;
        assert!(err.starts_with("edge.idd: unknown field `idd`"), "{err}");
        let err = load::<Sample>(
            Role::Edge,
            &Sample::default(),
            None,
            env(&[("FIRETOWER_EDGE__ID", "many")]),
            Table::new(),
        )
        .unwrap_err()
        .0;
        assert!(err.starts_with("edge.id: invalid type"), "{err}");
    }

    #[test]
    fn a_file_holds_one_role_table() {
        let one_of = |text: &str| parse_file(text).unwrap_err().0;
        assert!(one_of("id = 1\n").contains("unknown key `id`"));
        assert!(one_of("[edge]\n[metastore]\n").contains("exactly one table"));
        assert!(one_of("[edges]\n").contains("unknown key `edges`"));
        assert!(one_of("edge = 3\n").contains("must be a table"));
        assert!(one_of("[edge\n").contains("TOML parse error"));
    }

    #[test]
    fn the_rendered_config_reads_back_as_the_same_config() {
        let config = Sample::default();
        let text = render(Role::Distributor, &config).unwrap();
        let (role, table) = parse_file(&text).unwrap();
        assert_eq!(role, Role::Distributor);
        let back: Sample = load(role, &Sample::default(), Some(table), [], Table::new()).unwrap();
        assert_eq!(back, config);
    }
}
