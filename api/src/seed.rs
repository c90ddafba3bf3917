//! `courier-api seed --file catalog.json`: the demo's (and a new store's)
//! catalog, through the same validation as the admin API.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use courier_shared::config::Settings;
use courier_shared::db;
use courier_shared::service::catalog::{
    GameServerInput, ProductInput, save_game_server, save_product,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Catalog {
    #[serde(default)]
    game_servers: BTreeMap<String, GameServerInput>,
    #[serde(default)]
    products: BTreeMap<String, ProductInput>,
}

pub async fn run(settings: &Settings, file: &Path) -> anyhow::Result<()> {
    let text = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let catalog: Catalog = crate::json::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}: {} ({})", file.display(), e.message, e.code))?;
    let pool = db::connect_lazy_with(&settings.database, &settings.session())?;
    db::migrate(&pool).await.context("running migrations")?;
    let rules = courier_shared::service::deliverable::AcceptRules::from_settings(settings);
    for (name, server) in catalog.game_servers {
        save_game_server(&pool, &name, server, &rules)
            .await
            .with_context(|| format!("game server `{name}`"))?;
        println!("game server {name} saved");
    }
    for (sku, product) in catalog.products {
        save_product(&pool, &sku, product, &rules)
            .await
            .with_context(|| format!("product `{sku}`"))?;
        println!("product {sku} saved");
    }
    Ok(())
}
