//! Embeds every case of `cases/` in the library, so `codervpn conform`
//! needs no files beside the binary.

use std::fmt::Write as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=cases");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cases");
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut out = String::from(
        "/// Every case file: (file name, contents).\npub const CASES: &[(&str, &str)] = &[\n",
    );
    for file in files {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or("bad file name")?;
        writeln!(out, "    ({name:?}, include_str!({:?})),", file.display())?;
    }
    out.push_str("];\n");
    std::fs::write(
        std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("cases.rs"),
        out,
    )?;
    Ok(())
}
