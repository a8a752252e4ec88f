use super::*;

const SEED: &str = include_str!("../../../../examples/seed-config.json");

#[test]
fn seed_config_loads_unchanged() {
    let c = Config::parse("seed-config.json", SEED).unwrap();
    assert_eq!(c.targets.len(), 1);
    let t = &c.targets[0];
    assert_eq!(t.iqn, "iqn.1994-05.com.redhat:37d4cea93db4");
    let tags: Vec<(u16, &str, String)> = t
        .tpgs
        .iter()
        .map(|g| (g.tag, g.host.as_str(), g.addresses[0].to_string()))
        .collect();
    assert_eq!(
        tags,
        vec![
            (1, "testscsi.novalocal", "192.168.0.27:3260".to_string()),
            (2, "scsifirst", "192.168.0.32:3260".to_string())
        ]
    );
    assert_eq!(t.luns.len(), 1);
    let l = &t.luns[0];
    assert_eq!(l.lun, 0);
    assert_eq!(
        l.backstore,
        BackstoreSpec::Rbd {
            pool: "rbd".into(),
            namespace: None,
            image: "wuxingyi".into(),
            size: None,
        }
    );
    // lrbd's rule: uuid3(NAMESPACE_DNS, pool + target + image).
    let want = uuid::Uuid::new_v3(
        &uuid::Uuid::NAMESPACE_DNS,
        b"rbdiqn.1994-05.com.redhat:37d4cea93db4wuxingyi",
    );
    assert_eq!(l.serial, want.to_string());
    assert_eq!(t.auth.mode, AuthMode::None);
}

#[test]
fn host_selection() {
    let c = Config::parse("seed", SEED).unwrap();
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    assert_eq!(
        c.select_host(Some("scsifirst"), &[], "x").unwrap(),
        "scsifirst"
    );
    assert!(c.select_host(Some("nope"), &[], "x").is_err());
    assert_eq!(
        c.select_host(None, &[ip("192.168.0.32")], "x").unwrap(),
        "scsifirst"
    );
    assert_eq!(
        c.select_host(None, &[ip("10.1.1.1")], "testscsi").unwrap(),
        "testscsi.novalocal"
    );
    assert_eq!(
        c.select_host(None, &[], "scsifirst.example.org").unwrap(),
        "scsifirst"
    );
    let e = c.select_host(None, &[], "other").unwrap_err();
    assert!(e.message.contains("--host"), "{e}");
}

fn err(json: &str) -> ConfigError {
    Config::parse("c.json", json).unwrap_err()
}

#[test]
fn errors_name_the_json_path() {
    let e = err(
        r#"{"targets": [{"target": "iqn.2003-01.org.x:t", "hosts": [{"host": "a", "portal": "p", "colour": 1}]}]}"#,
    );
    assert_eq!(e.path, "targets[0].hosts[0].colour");
    assert!(e.message.contains("colour"), "{e}");
    let e = err(r#"{"portals": [{"name": "p", "addresses": ["not-an-ip"]}]}"#);
    assert_eq!(e.path, "portals[0].addresses[0]");
    let e = err(
        r#"{"targets": [{"target": "iqn.2003-01.org.x:t", "hosts": [{"host": "a", "portal": "missing"}]}]}"#,
    );
    assert_eq!(e.path, "targets[0].hosts[0].portal");
    let e = err(r#"{"bogus": 1}"#);
    assert!(e.message.contains("bogus"));
    let e =
        err(r#"{"targets": [{"target": "iqn.2003-01.org.x:t", "host": "a", "tpg_nonsense": 1}]}"#);
    assert_eq!(e.path, "targets[0].tpg_nonsense");
    assert_eq!(err("{").path, ".");
}

const FULL: &str = r#"{
  "auth": [{"target": "iqn.2003-01.org.x:t", "authentication": "acls",
            "acls": [{"initiator": "iqn.2003-01.org.i:a", "userid": "u", "password": "p",
                      "param_MaxBurstLength": "65536", "attrib_nopin_timeout": 5},
                     {"iqn": "iqn.2003-01.org.i:b", "userid": "u2", "password": "p2", "mutual": "enable",
                      "userid_mutual": "tu", "password_mutual": "tp"}],
            "discovery": {"auth": "enable", "userid": "d", "password": "dp"}}],
  "targets": [{"target": "iqn.2003-01.org.x:t", "tpg_default_cmdsn_depth": 64,
               "hosts": [{"host": "gw1", "portal": "p1"}, {"host": "gw2", "portal": "p2"}]}],
  "portals": [{"name": "p1", "addresses": ["127.0.0.1 3261", "[::1]:3262"]},
              {"name": "p2", "addresses": ["127.0.0.2:3263"]}],
  "pools": [{"pool": "rbd", "gateways": [{"target": "iqn.2003-01.org.x:t", "tpg": [
     {"image": "a", "lun": 3, "backstore": "memory", "size": "64M"},
     {"image": "b", "backstore": "file", "path": "/tmp/b.img", "size": "1G", "owner": "gw2", "backstore_block_size": 4096},
     {"image": "c", "uuid": "0123abcd-0000-0000-0000-000000000000", "backstore_queue_depth": 64}]}]}]
}"#;

#[test]
fn full_config_resolves() {
    let c = Config::parse("full", FULL).unwrap();
    let t = &c.targets[0];
    assert_eq!(t.attributes.cmdsn_depth, 64);
    assert_eq!(t.tpgs[0].addresses[0].to_string(), "127.0.0.1:3261");
    assert_eq!(t.tpgs[0].addresses[1].to_string(), "[::1]:3262");
    let luns: Vec<(u64, &str, &str)> = t
        .luns
        .iter()
        .map(|l| (l.lun, l.image.as_str(), l.owner.as_str()))
        .collect();
    assert_eq!(
        luns,
        vec![(0, "b", "gw2"), (1, "c", "gw2"), (3, "a", "gw2")]
    );
    assert_eq!(t.luns[0].attributes.block_size, 4096);
    assert_eq!(
        t.luns[2].backstore,
        BackstoreSpec::Memory { size: 64 << 20 }
    );
    assert_eq!(t.luns[1].serial, "0123abcd-0000-0000-0000-000000000000");
    assert_eq!(t.auth.mode, AuthMode::Acls);
    assert_eq!(
        t.auth.acls[0]
            .params
            .get("MaxBurstLength")
            .map(String::as_str),
        Some("65536")
    );
    assert_eq!(
        t.auth.acls[1].chap.as_ref().unwrap().mutual,
        Some(("tu".into(), "tp".into()))
    );
    assert_eq!(t.auth.discovery.as_ref().unwrap().user, "d");
    assert!(c
        .warnings
        .iter()
        .any(|w| w.contains("backstore_queue_depth")));
    assert_eq!(t.auth.acls[0].nopin_timeout(), 5);
    assert_eq!(
        t.auth.acls[1].nopin_timeout(),
        crate::config::DEFAULT_NOPIN_TIMEOUT
    );
    assert_eq!(t.auth.acls[0].nopin_response_timeout(), 30);
}

#[test]
fn initiator_attributes_are_checked() {
    for (bad, what) in [
        ("\"attrib_nopin_timout\": 5", "unknown initiator attribute"),
        ("\"attrib_nopin_timeout\": \"soon\"", "expected seconds"),
        ("\"attrib_nopin_response_timeout\": 0", "at least 1 second"),
    ] {
        let e = err(&FULL.replace("\"attrib_nopin_timeout\": 5", bad));
        assert!(e.path.starts_with("auth[0].acls[0].attrib_nopin_"), "{e}");
        assert!(e.to_string().contains(what), "{e}");
    }
    let c = Config::parse(
        "full",
        &FULL.replace(
            "\"attrib_nopin_timeout\": 5",
            "\"attrib_dataout_timeout\": 3",
        ),
    )
    .unwrap();
    assert!(c.warnings.iter().any(|w| w.contains("dataout_timeout")));
}

#[test]
fn sizes_and_addresses() {
    assert_eq!(parse_size("1G"), Some(1 << 30));
    assert_eq!(parse_size("512M"), Some(512 << 20));
    assert_eq!(parse_size("4096"), Some(4096));
    assert_eq!(parse_size("2GB"), Some(2 << 30));
    assert_eq!(parse_size("x"), None);
    assert_eq!(parse_size("0"), None);
    use resolve::parse_portal_address as p;
    assert_eq!(p("10.0.0.1").unwrap().to_string(), "10.0.0.1:3260");
    assert_eq!(p("10.0.0.1 3261").unwrap().to_string(), "10.0.0.1:3261");
    assert_eq!(p("[fe80::1]").unwrap().port(), 3260);
    assert!(p("10.0.0.1:x").is_none());
}

#[test]
fn chap_secrets_are_checked() {
    for (from, to, path, what) in [
        (
            "\"password\": \"p\",",
            "\"password\": \"\",",
            "auth[0].acls[0].password",
            "empty",
        ),
        (
            "\"userid\": \"u\",",
            "\"userid\": \"\",",
            "auth[0].acls[0].userid",
            "empty",
        ),
        (
            "\"password_mutual\": \"tp\"",
            "\"password_mutual\": \"p2\"",
            "auth[0].acls[1].password_mutual",
            "must differ",
        ),
    ] {
        let e = err(&FULL.replace(from, to));
        assert_eq!(e.path, path, "{e}");
        assert!(e.to_string().contains(what), "{e}");
    }
    // Short secrets load, with a warning naming the secret's place (never the secret).
    let c = Config::parse("full", FULL).unwrap();
    let w: Vec<&String> = c
        .warnings
        .iter()
        .filter(|w| w.contains("Windows initiators accept only 12 to 16"))
        .collect();
    assert!(
        w.iter().any(|w| w.starts_with("auth[0].acls[0].password:")),
        "{w:?}"
    );
    assert!(w.iter().all(|w| !w.contains("\"p\"")));
    let ok = FULL.replace("\"password\": \"p\",", "\"password\": \"twelve-chars\",");
    let c = Config::parse("full", &ok).unwrap();
    assert!(!c
        .warnings
        .iter()
        .any(|w| w.starts_with("auth[0].acls[0].password:")));
}
