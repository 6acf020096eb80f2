//! Templates (confd's idea): a TOML resource file names a template, the keys
//! it depends on, a destination with owner and mode, and optional check and
//! reload commands. Whenever one of those keys changes the template is
//! rendered again; a changed result is staged next to the destination
//! (write, fsync), checked, renamed over it atomically, and then the reload
//! command runs. Any error names the template and line, and leaves the old
//! file in place.
//!
//! ```toml
//! # /etc/basalt/templates.d/nginx.toml
//! [template]
//! src = "nginx.conf.j2"            # relative to this file's directory
//! dest = "/etc/nginx/conf.d/app.conf"
//! keys = ["/services/web"]
//! owner = "root"                   # name or number; default: unchanged
//! group = "root"
//! mode = "0644"
//! check_cmd = "/usr/sbin/nginx -t -c {{.src}}"   # {{.src}}: the staged file
//! reload_cmd = "/usr/sbin/nginx -s reload"
//! ```
//!
//! Templates are Jinja (minijinja) with store functions: `get(key)` (fails
//! if missing), `getv(key, default)`, `exists(key)`, `ls(dir)` (child names),
//! `gets(dir)` (every file below as `{key, value}`), `getvs(dir)` (their
//! values).

use crate::error::ErrorCode;
use crate::event::NodeView;
use crate::history::is_below;
use crate::service::Store;
use crate::tree::clean_path;
use serde::Deserialize;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{path}: {message}")]
    Resource { path: PathBuf, message: String },
    #[error("template {name} line {line}: {message}")]
    Render { name: String, line: usize, message: String },
    #[error("{name}: writing {dest}: {source}")]
    Write { name: String, dest: PathBuf, source: std::io::Error },
    #[error("{name}: check command `{command}` failed ({status}), {dest} left as it was: {output}")]
    Check { name: String, command: String, dest: PathBuf, status: String, output: String },
    #[error("{name}: reload command `{command}` failed ({status}): {output}")]
    Reload { name: String, command: String, status: String, output: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceFile {
    template: ResourceSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceSpec {
    src: PathBuf,
    dest: PathBuf,
    #[serde(default)]
    keys: Vec<String>,
    owner: Option<String>,
    group: Option<String>,
    mode: Option<String>,
    check_cmd: Option<String>,
    reload_cmd: Option<String>,
}

/// One loaded template resource.
#[derive(Debug, Clone)]
pub struct Template {
    /// The template source file, which names it in errors.
    pub src: PathBuf,
    pub source: String,
    pub dest: PathBuf,
    pub keys: Vec<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: u32,
    pub check_cmd: Option<String>,
    pub reload_cmd: Option<String>,
}

/// What rendering a template did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Replaced,
}

impl Template {
    /// Load a resource file (`[template]` table) and the template it names.
    pub fn load(resource: &Path) -> Result<Template, TemplateError> {
        let err = |message: String| TemplateError::Resource { path: resource.to_path_buf(), message };
        let text = fs::read_to_string(resource).map_err(|e| err(format!("cannot read: {e}")))?;
        let spec: ResourceFile = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        let spec = spec.template;
        let base = resource.parent().unwrap_or(Path::new("."));
        let src = if spec.src.is_absolute() { spec.src.clone() } else { base.join(&spec.src) };
        let source = fs::read_to_string(&src).map_err(|e| err(format!("cannot read template {}: {e}", src.display())))?;
        if !spec.dest.is_absolute() {
            return Err(err(format!("dest {:?} must be an absolute path", spec.dest)));
        }
        let mode = match &spec.mode {
            None => 0o644,
            Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8).ok().filter(|m| *m <= 0o7777).ok_or_else(|| err(format!("mode {m:?} is not an octal file mode such as \"0644\"")))?,
        };
        let uid_and_gid = match &spec.owner {
            None => None,
            Some(o) => Some(lookup_user(o).ok_or_else(|| err(format!("owner {o:?} is not a user in /etc/passwd or a number")))?),
        };
        let gid = match &spec.group {
            None => uid_and_gid.map(|(_, g)| g),
            Some(g) => Some(lookup_group(g).ok_or_else(|| err(format!("group {g:?} is not a group in /etc/group or a number")))?),
        };
        Ok(Template {
            src,
            source,
            dest: spec.dest,
            keys: spec.keys.iter().map(|k| clean_path(k)).collect(),
            uid: uid_and_gid.map(|(u, _)| u),
            gid,
            mode,
            check_cmd: spec.check_cmd,
            reload_cmd: spec.reload_cmd,
        })
    }

    pub fn name(&self) -> String {
        self.src.display().to_string()
    }

    /// Whether a change at `key` concerns this template.
    pub fn watches(&self, key: &str) -> bool {
        self.keys.iter().any(|k| k == key || is_below(key, k) || is_below(k, key))
    }

    /// Render from the store's current contents.
    pub fn render(&self, store: &Store) -> Result<String, TemplateError> {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        let syntax = minijinja::syntax::SyntaxConfig::builder().keep_trailing_newline(true).build();
        if let Ok(syntax) = syntax {
            env.set_syntax(syntax);
        }
        add_store_functions(&mut env, store);
        let name = self.name();
        env.render_named_str(&name, &self.source, minijinja::context! {}).map_err(|e| {
            let mut message = e.detail().map(str::to_string).unwrap_or_else(|| e.kind().to_string());
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message.push_str(": ");
                message.push_str(&s.to_string());
                source = s.source();
            }
            TemplateError::Render { name: name.clone(), line: e.line().unwrap_or(0), message }
        })
    }

    /// Render, and replace the destination if the result differs.
    pub fn apply(&self, store: &Store) -> Result<Outcome, TemplateError> {
        let text = self.render(store)?;
        let name = self.name();
        let write_err = |source| TemplateError::Write { name: name.clone(), dest: self.dest.clone(), source };
        if let Ok(meta) = fs::metadata(&self.dest) {
            let same_content = fs::read(&self.dest).map(|c| c == text.as_bytes()).unwrap_or(false);
            let same_mode = meta.permissions().mode() & 0o7777 == self.mode;
            let same_owner = {
                use std::os::unix::fs::MetadataExt;
                self.uid.is_none_or(|u| u == meta.uid()) && self.gid.is_none_or(|g| g == meta.gid())
            };
            if same_content && same_mode && same_owner {
                return Ok(Outcome::Unchanged);
            }
        }
        let dir = self.dest.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(dir).map_err(write_err)?;
        let file_name = self.dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let staged = dir.join(format!(".{file_name}.basalt-staged"));
        let stage = || -> std::io::Result<()> {
            let mut f = File::create(&staged)?;
            f.write_all(text.as_bytes())?;
            f.set_permissions(fs::Permissions::from_mode(self.mode))?;
            if self.uid.is_some() || self.gid.is_some() {
                std::os::unix::fs::chown(&staged, self.uid, self.gid)?;
            }
            f.sync_all()
        };
        if let Err(e) = stage() {
            let _ = fs::remove_file(&staged);
            return Err(write_err(e));
        }
        if let Some(cmd) = &self.check_cmd {
            let cmd = cmd.replace("{{.src}}", &staged.display().to_string());
            if let Err((status, output)) = run_shell(&cmd) {
                let _ = fs::remove_file(&staged);
                return Err(TemplateError::Check { name, command: cmd, dest: self.dest.clone(), status, output });
            }
        }
        let commit = || -> std::io::Result<()> {
            fs::rename(&staged, &self.dest)?;
            File::open(dir)?.sync_all()
        };
        if let Err(e) = commit() {
            let _ = fs::remove_file(&staged);
            return Err(write_err(e));
        }
        if let Some(cmd) = &self.reload_cmd {
            if let Err((status, output)) = run_shell(cmd) {
                return Err(TemplateError::Reload { name, command: cmd.clone(), status, output });
            }
        }
        Ok(Outcome::Replaced)
    }
}

fn run_shell(cmd: &str) -> Result<(), (String, String)> {
    match Command::new("/bin/sh").arg("-c").arg(cmd).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stdout));
            Err((out.status.to_string(), text.trim().to_string()))
        }
        Err(e) => Err(("not started".into(), e.to_string())),
    }
}

fn store_error(e: crate::error::EtcdError) -> minijinja::Error {
    minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, format!("{}: {}", e.code.message(), e.cause))
}

fn files_below(node: &NodeView, out: &mut Vec<NodeView>) {
    if node.dir {
        for child in &node.nodes {
            files_below(child, out);
        }
    } else {
        out.push(node.clone());
    }
}

fn add_store_functions(env: &mut minijinja::Environment<'_>, store: &Store) {
    let s = store.clone();
    env.add_function("get", move |key: String| -> Result<String, minijinja::Error> {
        let e = s.get(&key, false).map_err(store_error)?;
        if e.node.dir {
            return Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, format!("{key} is a directory")));
        }
        Ok(e.node.value.unwrap_or_default())
    });
    let s = store.clone();
    env.add_function("getv", move |key: String, default: Option<String>| -> Result<String, minijinja::Error> {
        match s.get(&key, false) {
            Ok(e) if !e.node.dir => Ok(e.node.value.unwrap_or_default()),
            Ok(_) | Err(_) if default.is_some() => Ok(default.clone().unwrap_or_default()),
            Ok(_) => Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, format!("{key} is a directory"))),
            Err(e) => Err(store_error(e)),
        }
    });
    let s = store.clone();
    env.add_function("exists", move |key: String| -> bool { s.get(&key, false).is_ok() });
    let s = store.clone();
    env.add_function("ls", move |dir: String| -> Result<Vec<String>, minijinja::Error> {
        match s.get(&dir, false) {
            Ok(e) => Ok(e.node.nodes.iter().map(|n| n.key.rsplit('/').next().unwrap_or("").to_string()).collect()),
            Err(e) if e.code == ErrorCode::KeyNotFound => Ok(Vec::new()),
            Err(e) => Err(store_error(e)),
        }
    });
    let s = store.clone();
    let gets = move |dir: &str| -> Result<Vec<NodeView>, minijinja::Error> {
        let mut out = Vec::new();
        match s.get(dir, true) {
            Ok(e) => files_below(&e.node, &mut out),
            Err(e) if e.code == ErrorCode::KeyNotFound => {}
            Err(e) => return Err(store_error(e)),
        }
        Ok(out)
    };
    let gets2 = gets.clone();
    env.add_function("gets", move |dir: String| -> Result<minijinja::Value, minijinja::Error> {
        let pairs: Vec<minijinja::Value> = gets(&dir)?.into_iter().map(|n| minijinja::Value::from_pairs([("key", n.key), ("value", n.value.unwrap_or_default())])).collect();
        Ok(minijinja::Value::from(pairs))
    });
    env.add_function("getvs", move |dir: String| -> Result<Vec<String>, minijinja::Error> { Ok(gets2(&dir)?.into_iter().map(|n| n.value.unwrap_or_default()).collect()) });
}

fn lookup_in(file: &str, name: &str, id_field: usize) -> Option<(u32, u32)> {
    let text = fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > id_field + 1 && f[0] == name {
            Some((f[id_field].parse().ok()?, f[id_field + 1].parse().unwrap_or(0)))
        } else {
            None
        }
    })
}

/// A user name from /etc/passwd (static binaries have no NSS) or a number:
/// its uid and primary gid.
fn lookup_user(owner: &str) -> Option<(u32, u32)> {
    if let Ok(uid) = owner.parse::<u32>() {
        return Some((uid, lookup_in_by_id(uid).unwrap_or(uid)));
    }
    lookup_in("/etc/passwd", owner, 2)
}

fn lookup_in_by_id(uid: u32) -> Option<u32> {
    let text = fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[2] == uid.to_string()).then(|| f[3].parse().ok()).flatten()
    })
}

/// A group name from /etc/group, or a number.
pub fn lookup_group(group: &str) -> Option<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Some(gid);
    }
    lookup_in("/etc/group", group, 2).map(|(g, _)| g)
}

/// Every `*.toml` resource in `dir`, sorted by name: those that load, and
/// the errors of those that do not (a directory that cannot be listed is
/// one error).
pub fn load_dir(dir: &Path) -> (Vec<Template>, Vec<TemplateError>) {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return (Vec::new(), vec![TemplateError::Resource { path: dir.to_path_buf(), message: format!("cannot list: {e}") }]),
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect();
    paths.sort();
    let (mut templates, mut errors) = (Vec::new(), Vec::new());
    for p in &paths {
        match Template::load(p) {
            Ok(t) => templates.push(t),
            Err(e) => errors.push(e),
        }
    }
    (templates, errors)
}

fn apply_and_report(t: &Template, store: &Store) {
    match t.apply(store) {
        Ok(Outcome::Replaced) => eprintln!("basalt-store: template {} rendered to {}", t.name(), t.dest.display()),
        Ok(Outcome::Unchanged) => {}
        Err(e) => eprintln!("basalt-store: {e}"),
    }
}

/// Render every template now, then again whenever its keys change. Runs
/// for as long as the store does.
pub fn run(store: Store, templates: Vec<Template>) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("basalt-store: templates: cannot start: {e}");
            return;
        }
    };
    // The index is taken before rendering: a write that lands while the
    // templates render is then still watched for (and maybe rendered twice),
    // never missed.
    let mut next = store.index() + 1;
    for t in &templates {
        apply_and_report(t, &store);
    }
    loop {
        let watched = runtime.block_on(async {
            let mut w = store.watch("/", true, next)?;
            w.next_event().await
        });
        match watched {
            Ok(event) => {
                // Let a burst of writes settle, then render once for all of it.
                std::thread::sleep(std::time::Duration::from_millis(50));
                let current = store.index();
                let mut keys = vec![event.node.key.clone()];
                keys.extend(store.changed_keys(event.index() + 1));
                for t in &templates {
                    if keys.iter().any(|k| t.watches(k)) {
                        apply_and_report(t, &store);
                    }
                }
                next = current + 1;
            }
            Err(e) if e.code == ErrorCode::EventIndexCleared => {
                // Fell behind the kept history: render everything again.
                next = store.index() + 1;
                for t in &templates {
                    apply_and_report(t, &store);
                }
            }
            Err(e) => {
                eprintln!("basalt-store: templates: watch failed: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
