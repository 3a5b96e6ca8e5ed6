//! A sink's `buffer` table through the loader.

use crate::config::load_str;

use bytesize::ByteSize;

use crate::buffer::*;

fn config(buffer: &str) -> Result<crate::config::Config, Vec<String>> {
    let text = format!(
        r#"
[sources.app]
type = "file"
include = ["/x/*.log"]

[sinks.out]
type = "blackhole"
inputs = ["app"]
{buffer}
"#
    );
    load_str(&text, "t.toml", &|_| None).map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
}

#[test]
fn default_is_memory_and_disk_parses() {
    assert_eq!(config("").unwrap().sinks[0].buffer, BufferConfig::Memory);
    assert_eq!(
        config(r#"buffer = { type = "memory" }"#).unwrap().sinks[0].buffer,
        BufferConfig::Memory
    );
    let c = config(r#"buffer = { type = "disk", max_size = "1GiB" }"#).unwrap();
    assert_eq!(
        c.sinks[0].buffer,
        BufferConfig::Disk(DiskBufferConfig {
            max_size: ByteSize::gib(1),
            when_full: WhenFull::Block
        })
    );
    assert!(
        c.describe()
            .contains("sink out (blackhole) <- app; disk buffer: max_size 1.0 GiB, when_full block"),
        "{}",
        c.describe()
    );
    let c = config("[sinks.out.buffer]\ntype = \"disk\"\nmax_size = \"8MiB\"\nwhen_full = \"drop_newest\"").unwrap();
    assert!(matches!(
        c.sinks[0].buffer,
        BufferConfig::Disk(DiskBufferConfig {
            when_full: WhenFull::DropNewest,
            ..
        })
    ));
}

#[test]
fn errors_name_the_key_and_line() {
    let e = config(r#"buffer = { type = "disk", max_size = "1GiB", colour = 1 }"#).unwrap_err();
    assert!(
        e[0].starts_with("t.toml:9:") && e[0].contains("`sinks.out.buffer.colour`: unknown field `colour`"),
        "{e:?}"
    );
    let e = config("[sinks.out.buffer]\ntype = \"disk\"\nmax_size = \"100KiB\"").unwrap_err();
    assert!(
        e[0].starts_with("t.toml:11:1: `sinks.out.buffer.max_size`: must be at least 1MiB"),
        "{e:?}"
    );
    let e = config("[sinks.out.buffer]\ntype = \"disk\"\nmax_size = \"1GiB\"\nwhen_full = \"panic\"").unwrap_err();
    assert!(
        e[0].starts_with("t.toml:12:") && e[0].contains("`sinks.out.buffer.when_full`"),
        "{e:?}"
    );
    let e = config(r#"buffer = { type = "disk" }"#).unwrap_err();
    assert!(
        e[0].contains("`sinks.out.buffer`: a disk buffer needs `max_size`"),
        "{e:?}"
    );
    let e = config(r#"buffer = { max_size = "1GiB" }"#).unwrap_err();
    assert!(
        e[0].contains("`sinks.out.buffer.max_size`: only a `type = \"disk\"`"),
        "{e:?}"
    );
    let e = config(r#"buffer = { type = "tape" }"#).unwrap_err();
    assert!(e[0].contains("`sinks.out.buffer.type`"), "{e:?}");
}

#[test]
fn sources_do_not_take_a_buffer() {
    let text = r#"
[sources.app]
type = "file"
include = ["/x/*.log"]
buffer = { type = "disk", max_size = "1GiB" }

[sinks.out]
type = "blackhole"
inputs = ["app"]
"#;
    let e = load_str(text, "t.toml", &|_| None).unwrap_err();
    assert!(e.0[0].to_string().contains("unknown field `buffer`"), "{e}");
}
