//! Unit tests of the bundle: sizes, splitting, the manifest, verification and placing.

use super::*;
use std::io::Read;

fn write(dir: &Path, rel: &str, text: &str) -> PathBuf {
    let p = dir.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, text).unwrap();
    p
}

#[test]
fn sizes_parse_with_units() {
    assert_eq!(parse_size("60M").unwrap(), 60 << 20);
    assert_eq!(parse_size("64k").unwrap(), 64 << 10);
    assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
    assert_eq!(parse_size("4096").unwrap(), 4096);
    let err = parse_size("60Q").unwrap_err().to_string();
    assert!(err.starts_with("failed to read part size \"60Q\""), "{err}");
    assert!(parse_size("0").is_err() && parse_size("").is_err());
}

#[test]
fn parts_are_under_the_size_and_join_into_the_tar() {
    let src = tempfile::tempdir().unwrap();
    let big: String = (0..40_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let entries = vec![
        Entry {
            source: write(src.path(), "cases/a/x.toml", &big),
            path: "cases/a/x.toml".into(),
            place: Place::Bundle,
        },
        Entry {
            source: write(src.path(), "w.whl", "wheel"),
            path: "wheels/p/w.whl".into(),
            place: Place::Wheel {
                package: "p".into(),
            },
        },
    ];
    let manifest = Manifest::build("c.toml", &entries).unwrap();
    assert_eq!(manifest.files[0].size, 40_000);
    let out = tempfile::tempdir().unwrap();
    write(out.path(), "part.099", "stale");
    let parts = write_parts(out.path(), &manifest, &entries, 8192).unwrap();
    assert!(parts.len() >= 5, "{parts:?}");
    assert!(!out.path().join("part.099").exists());
    let mut joined = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p.file_name().unwrap(), format!("part.{i:03}").as_str());
        let bytes = fs::read(p).unwrap();
        assert!(bytes.len() as u64 <= 8192);
        joined.extend(bytes);
    }
    let mut archive = tar::Archive::new(joined.as_slice());
    let mut names = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        let mut text = String::new();
        e.read_to_string(&mut text).unwrap();
        if name == "cases/a/x.toml" {
            assert_eq!(text, big);
        }
        if name == MANIFEST {
            let back: Manifest = serde_json::from_str(&text).unwrap();
            assert_eq!(back, manifest);
        }
        names.push(name);
    }
    assert_eq!(names, [MANIFEST, "cases/a/x.toml", "wheels/p/w.whl"]);
}

#[test]
fn verify_names_the_file_and_both_hashes_then_place_moves_it() {
    let bundle = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let entries = vec![
        Entry {
            source: write(bundle.path(), "gguf/m.gguf", "weights"),
            path: "gguf/m.gguf".into(),
            place: Place::Gguf { model: "m".into() },
        },
        Entry {
            source: write(bundle.path(), "wheelhouse/a.whl", "a"),
            path: "wheelhouse/a.whl".into(),
            place: Place::Wheelhouse,
        },
    ];
    let manifest = Manifest::build("c.toml", &entries).unwrap();
    verify(bundle.path(), &manifest, cache.path()).unwrap();

    write(bundle.path(), "gguf/m.gguf", "weightz");
    let err = verify(bundle.path(), &manifest, cache.path()).unwrap_err();
    let PackError::Mismatch {
        file,
        expected,
        actual,
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(file, "gguf/m.gguf");
    assert_eq!(expected, &manifest.files[0].sha256);
    assert_ne!(actual, expected);
    let text = err.to_string();
    assert!(
        text.starts_with("failed to verify gguf/m.gguf: sha256 is "),
        "{text}"
    );
    assert!(text.contains(expected) && text.contains(actual), "{text}");

    write(bundle.path(), "gguf/m.gguf", "weights");
    assert_eq!(place(bundle.path(), &manifest, cache.path()).unwrap(), 2);
    let gguf = cache.path().join("gguf/m.gguf");
    assert_eq!(fs::read_to_string(&gguf).unwrap(), "weights");
    assert_eq!(
        fs::read_to_string(cache.path().join("gguf/m.gguf.verified")).unwrap(),
        manifest.files[0].sha256
    );
    assert!(cache.path().join("wheelhouse/a.whl").is_file());
    // placed files still verify, so unpacking again is harmless
    verify(bundle.path(), &manifest, cache.path()).unwrap();
    assert_eq!(place(bundle.path(), &manifest, cache.path()).unwrap(), 0);
    fs::remove_file(&gguf).unwrap();
    let err = verify(bundle.path(), &manifest, cache.path()).unwrap_err();
    assert!(matches!(err, PackError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("gguf/m.gguf"), "{err}");
}

#[test]
fn the_project_plan_follows_the_config() {
    let root = tempfile::tempdir().unwrap();
    write(root.path(), "cases/a/one.toml", "x");
    write(root.path(), "cases/b/two.toml", "y");
    write(root.path(), "replay.jsonl", "{}");
    write(root.path(), "snapshots/ref/a/one.snap", "s");
    write(root.path(), "snapshots/other/a/one.snap", "s");
    let text = "[[models]]\nname = \"ref\"\nsource = \"reference\"\n\n[[models]]\nname = \"rp\"\nsource = \"replay\"\npath = \"replay.jsonl\"\n\n[[models]]\nname = \"q\"\nsource = \"onnx\"\nmodel = \"qwen2.5-coder-0.5b-instruct\"\n";
    let cfg_path = write(root.path(), "harness/c.toml", text);
    let config = Config::load(&cfg_path, root.path()).unwrap();
    let models: Vec<&ModelProfile> = config.models.iter().collect();
    let plan = project_entries(&config, &models).unwrap();
    let paths: Vec<&str> = plan.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "harness/c.toml",
            "cases/a/one.toml",
            "cases/b/two.toml",
            "snapshots/ref/a/one.snap",
            "replay.jsonl"
        ]
    );
    assert_eq!(plan.config, "harness/c.toml");
    assert_eq!(plan.default_models, ["qwen2.5-coder-0.5b-instruct"]);
    assert!(plan.onnx);

    let outside = tempfile::tempdir().unwrap();
    let text = format!(
        "[suite]\ncases = {:?}\n",
        outside.path().display().to_string()
    );
    let cfg_path = write(root.path(), "harness/d.toml", &text);
    let config = Config::load(&cfg_path, root.path()).unwrap();
    let err = project_entries(&config, &[]).unwrap_err().to_string();
    assert!(err.starts_with("failed to pack "), "{err}");
    assert!(err.contains("outside the project root"), "{err}");
}

#[test]
fn a_suite_without_snapshots_carries_the_run_it_follows() {
    let root = tempfile::tempdir().unwrap();
    write(root.path(), "cases/a/one.toml", "x");
    write(root.path(), "accepted/h200/results-ref.jsonl", "{}");
    let text = "[suite]\nsnapshot = false\naccepted_outputs = \"accepted/h200\"\n";
    let cfg_path = write(root.path(), "harness/c.toml", text);
    let config = Config::load(&cfg_path, root.path()).unwrap();
    let plan = project_entries(&config, &[]).unwrap();
    let paths: Vec<&str> = plan.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "harness/c.toml",
            "cases/a/one.toml",
            "accepted/h200/results-ref.jsonl"
        ]
    );
}

#[test]
fn commands_copy_each_part_and_the_last_runs_the_script() {
    let parts = [
        "out dir/part.000".to_string(),
        "out dir/part.001".to_string(),
    ];
    let cmds = send_commands(&parts, "out dir/unpack.sh", "/tmp/codegen-bundle");
    assert_eq!(
        cmds,
        [
            "mkdir -p /tmp/codegen-bundle && cp 'out dir/part.000' /tmp/codegen-bundle/",
            "mkdir -p /tmp/codegen-bundle && cp 'out dir/part.001' /tmp/codegen-bundle/ && cp 'out dir/unpack.sh' /tmp/codegen-bundle/ && sh /tmp/codegen-bundle/unpack.sh --run",
        ]
    );
    assert!(unpack_script(2).contains("-ne 2 ]"));
    let m = Manifest {
        format: 1,
        config: "harness/c.toml".into(),
        files: vec![],
    };
    assert_eq!(
        run_command(Path::new("/b"), &m, Path::new("/c")),
        "cd /b && CODEGEN_CACHE=/c ./codegen run --config harness/c.toml"
    );
}
