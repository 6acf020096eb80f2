use super::*;
use crate::request::Mutation;
use crate::service::Limits;
use std::time::{Duration, Instant};

fn set(store: &Store, key: &str, value: &str) {
    store.write_blocking(Mutation::Set { key: key.into(), dir: false, value: value.into(), expires: None, refresh: false }).unwrap();
}

struct Fixture {
    dir: tempfile::TempDir,
    store: Store,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("data"), Limits::default(), 1000).unwrap();
    Fixture { dir, store }
}

impl Fixture {
    fn resource(&self, name: &str, template: &str, extra: &str) -> Template {
        let conf = self.dir.path().join("templates.d");
        fs::create_dir_all(&conf).unwrap();
        fs::write(conf.join(format!("{name}.tmpl")), template).unwrap();
        let dest = self.dir.path().join("etc").join(format!("{name}.conf"));
        let toml = format!("[template]\nsrc = \"{name}.tmpl\"\ndest = \"{}\"\nkeys = [\"/services\"]\nmode = \"0640\"\n{extra}", dest.display());
        fs::write(conf.join(format!("{name}.toml")), toml).unwrap();
        Template::load(&conf.join(format!("{name}.toml"))).unwrap()
    }
}

#[test]
fn renders_store_values_with_mode() {
    let f = fixture();
    set(&f.store, "/services/web/a", "10.0.0.1:80");
    set(&f.store, "/services/web/b", "10.0.0.2:80");
    set(&f.store, "/services/name", "app");
    let t = f.resource(
        "nginx",
        "upstream {{ get('/services/name') }} {\n{% for s in gets('/services/web') %}  server {{ s.value }}; # {{ s.key }}\n{% endfor %}}\n{{ getv('/missing', 'dflt') }} {{ exists('/services') }} {{ ls('/services') | join(',') }}\n",
        "",
    );
    assert_eq!(t.apply(&f.store).unwrap(), Outcome::Replaced);
    let text = fs::read_to_string(&t.dest).unwrap();
    assert_eq!(text, "upstream app {\n  server 10.0.0.1:80; # /services/web/a\n  server 10.0.0.2:80; # /services/web/b\n}\ndflt True name,web\n");
    assert_eq!(fs::metadata(&t.dest).unwrap().permissions().mode() & 0o7777, 0o640);
    assert_eq!(t.apply(&f.store).unwrap(), Outcome::Unchanged);
}

#[test]
fn errors_name_template_and_line_and_keep_the_old_file() {
    let f = fixture();
    set(&f.store, "/services/x", "1");
    let good = f.resource("app", "x={{ get('/services/x') }}\n", "");
    good.apply(&f.store).unwrap();
    let bad = f.resource("app", "x={{ get('/services/x') }}\ny={{ get('/services/missing') }}\n", "");
    let e = bad.apply(&f.store).unwrap_err().to_string();
    assert!(e.contains("app.tmpl") && e.contains("line 2") && e.contains("Key not found"), "{e}");
    let syntax = f.resource("app", "line one\n{% for x in %}\n", "");
    let e = syntax.apply(&f.store).unwrap_err().to_string();
    assert!(e.contains("app.tmpl line 2"), "{e}");
    assert_eq!(fs::read_to_string(&good.dest).unwrap(), "x=1\n");
}

#[test]
fn failed_check_keeps_old_file_and_reload_runs_after_replace() {
    let f = fixture();
    set(&f.store, "/services/x", "good");
    let marker = f.dir.path().join("reloaded");
    let extra = format!("check_cmd = \"grep -q good {{{{.src}}}}\"\nreload_cmd = \"echo reloaded >> {}\"\n", marker.display());
    let t = f.resource("checked", "value={{ get('/services/x') }}\n", &extra);
    assert_eq!(t.apply(&f.store).unwrap(), Outcome::Replaced);
    assert_eq!(fs::read_to_string(&marker).unwrap(), "reloaded\n");
    set(&f.store, "/services/x", "bad");
    let e = t.apply(&f.store).unwrap_err();
    assert!(matches!(e, TemplateError::Check { .. }), "{e}");
    assert_eq!(fs::read_to_string(&t.dest).unwrap(), "value=good\n");
    assert_eq!(fs::read_to_string(&marker).unwrap(), "reloaded\n");
    let leftovers: Vec<_> = fs::read_dir(t.dest.parent().unwrap()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no staged file left behind");
}

#[test]
fn resource_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.toml");
    fs::write(&p, "[template]\nsrc = \"none.tmpl\"\ndest = \"/etc/app.conf\"\n").unwrap();
    let e = Template::load(&p).unwrap_err().to_string();
    assert!(e.contains("x.toml") && e.contains("none.tmpl"), "{e}");
    fs::write(dir.path().join("t"), "").unwrap();
    fs::write(&p, "[template]\nsrc = \"t\"\ndest = \"/etc/app.conf\"\nmode = \"rw\"\n").unwrap();
    assert!(Template::load(&p).unwrap_err().to_string().contains("mode"));
    fs::write(&p, "[template]\nsrc = \"t\"\ndest = \"/etc/app.conf\"\nowner = \"no-such-user-here\"\n").unwrap();
    assert!(Template::load(&p).unwrap_err().to_string().contains("owner"));
}

#[test]
fn a_broken_resource_is_reported_and_the_others_load() {
    let f = fixture();
    let good = f.resource("good", "x\n", "");
    let conf = good.src.parent().unwrap().to_path_buf();
    fs::write(conf.join("bad.toml"), "[template]\nsrc = \"good.tmpl\"\n").unwrap();
    fs::write(conf.join("notes.txt"), "not a resource").unwrap();
    let (templates, errors) = load_dir(&conf);
    assert_eq!(templates.iter().map(|t| t.dest.clone()).collect::<Vec<_>>(), [good.dest]);
    assert_eq!(errors.len(), 1);
    let e = errors[0].to_string();
    assert!(e.contains("bad.toml") && e.contains("dest"), "{e}");
    let (templates, errors) = load_dir(&f.dir.path().join("missing"));
    assert!(templates.is_empty() && errors[0].to_string().contains("cannot list"));
}

#[test]
fn runner_rerenders_when_watched_keys_change() {
    let f = fixture();
    set(&f.store, "/services/x", "1");
    let t = f.resource("live", "x={{ getv('/services/x', 'none') }}\n", "");
    let dest = t.dest.clone();
    let store = f.store.clone();
    std::thread::spawn(move || run(store, vec![t]));
    let wait_for = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if fs::read_to_string(&dest).ok().as_deref() == Some(want) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} never became {want:?}", dest.display());
    };
    wait_for("x=1\n");
    set(&f.store, "/unrelated", "z");
    set(&f.store, "/services/x", "2");
    wait_for("x=2\n");
    f.store.write_blocking(Mutation::Delete { key: "/services".into(), dir: true, recursive: true }).unwrap();
    wait_for("x=none\n");
}
