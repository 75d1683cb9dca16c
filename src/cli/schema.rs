//! `pillowtop schema`: creates the pillowtop tables (checkpoints, errors, liveness) if missing.

use super::conn::Conn;
use super::ui::Ui;
use crate::pg::redact;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    #[command(flatten)]
    pub conn: Conn,
}

pub async fn exec(a: Args, ui: &dyn Ui) -> anyhow::Result<u8> {
    let pg = a.conn.pg()?;
    crate::store::schema::ensure_schema(&pg).await?;
    ui.out(&format!(
        "pillowtop tables are present in {}",
        redact(pg.url())
    ));
    Ok(0)
}
