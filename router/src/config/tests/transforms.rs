//! Transform tables through the loader: the errors name the key.

use std::time::Duration;

use crate::transforms::partial_message::PartialMessageConfig;

#[test]
fn multiline_config_needs_one_rule() {
    let check = |text: &str| {
        let cfg = crate::config::load_str(
            &format!(
                "[sources.app]\ntype = \"file\"\ninclude = [\"/x/*.log\"]\n[transforms.m]\ntype = \"multiline\"\ninputs = [\"app\"]\n{text}\n[sinks.out]\ntype = \"blackhole\"\ninputs = [\"m\"]\n"
            ),
            "t.toml",
            &|_| None,
        );
        cfg.err().map(|e| e.to_string()).unwrap_or_default()
    };
    assert!(
        check("").contains("needs exactly one of `start_pattern` and `preset`"),
        "{}",
        check("")
    );
    assert!(check("preset = \"go\"\nstart_pattern = \"x\"").contains("exactly one"));
    assert!(check("preset = \"ruby\"").contains("ruby"));
    assert!(check("preset = \"go\"\nmax_lines = 0").contains("transforms.m.max_lines"));
    assert_eq!(check("preset = \"go\"\nflush_timeout = \"500ms\""), "");
}

#[test]
fn partial_message_config_defaults_and_errors() {
    let c = PartialMessageConfig::default();
    assert_eq!(
        (c.key.as_str(), c.max_size.as_u64(), c.flush_timeout),
        ("log", 1 << 20, Duration::from_secs(2))
    );
    let check = |text: &str| {
        crate::config::load_str(
                &format!(
                    "[sources.fw]\ntype = \"forward\"\n[transforms.p]\ntype = \"partial_message\"\ninputs = [\"fw\"]\n{text}\n[sinks.out]\ntype = \"blackhole\"\ninputs = [\"p\"]\n"
                ),
                "t.toml",
                &|_| None,
            )
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert_eq!(check(""), "");
    assert!(
        check("key = \"\"").contains("transforms.p.key"),
        "{}",
        check("key = \"\"")
    );
    assert!(check("flush_timeout = \"0s\"").contains("transforms.p.flush_timeout"));
    let e = check("max_sise = \"1KiB\"");
    assert!(e.contains("max_sise") && e.contains("t.toml:6"), "{e}");
}

#[test]
fn redact_config_errors_name_the_key() {
    let check = |text: &str| {
        let cfg = crate::config::load_str(
            &format!(
                "[sources.app]\ntype = \"file\"\ninclude = [\"/x/*.log\"]\n[transforms.r]\ntype = \"redact\"\ninputs = [\"app\"]\n{text}\n[sinks.out]\ntype = \"blackhole\"\ninputs = [\"r\"]\n"
            ),
            "t.toml",
            &|_| None,
        );
        cfg.err().map(|e| e.to_string()).unwrap_or_default()
    };
    assert!(
        check("mode = \"hash\"").contains("transforms.r.salt"),
        "{}",
        check("mode = \"hash\"")
    );
    assert!(check("salt = \"x\"").contains("only applies with `mode = \"hash\"`"));
    assert!(check("detectors = [\"phone\"]").contains("phone"));
    assert!(check("custom = [{ name = \"email\", pattern = \"x\" }]").contains("already a detector name"));
    assert!(check("custom = [{ name = \"x\", pattern = \"(\" }]").contains("regex"));
    assert_eq!(check(""), "");
}
