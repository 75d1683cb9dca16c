//! The PostgreSQL side of a reindex ([`super::Version`]): a `postgres_table` processor's table
//! rebuilt as a new table beside it, swapped in by renames.
//!
//! Names (the run's row): `alias` is the configured table (readers and writers keep using that
//! name), `new_index` the version built (`{table}_r{UTC timestamp}`), `old_index` the name the
//! serving version takes at the swap (`{table}_o{timestamp}`). The live processor writes the
//! configured table and the other version in one transaction
//! ([`crate::store::reindex::ReindexRun::table_targets`]).
//!
//! The swap, in one transaction: the serving table is renamed to `old_index`, the new one to
//! the configured name, and a view named `new_index` over `old_index` is left: a process that
//! has not yet seen the swap writes the configured name (now the new version) and `new_index`
//! (through the view, the old version), so both versions still get every write until every
//! process writes `old_index` itself. A rollback does the mirror image (a view named
//! `old_index` over the new version). The views go with the version deleted at the end.
//! Writes through a view fall back from COPY to the merge (`INSERT … ON CONFLICT` is supported
//! on an automatically updatable view).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chrono::Utc;
use serde_json::Value;
use tokio_postgres::types::ToSql;

use super::{ReindexOptions, Version};
use crate::error::Result;
use crate::pg::{err, Pg};
use crate::processor::postgres::config::{quote_ident, ChangeField};
use crate::processor::postgres::encoder::{Action, Encoder};
use crate::processor::postgres::{PgTableProcessor, TableDefinition};
use crate::processor::Processor;
use crate::store::reindex::{ReindexRun, Step, Update};

/// A `postgres_table` processor's table versions.
pub(super) struct TableVersion {
    def: TableDefinition,
    encoder: Encoder,
    pg: Arc<Pg>,
}

/// The one primary-key column, filled from the change's id (what the verification compares
/// with the source's ids).
fn id_column(def: &TableDefinition) -> Option<&str> {
    match def.primary_key.as_slice() {
        [pk] => def
            .columns
            .iter()
            .find(|c| &c.name == pk && c.change == Some(ChangeField::Id))
            .map(|c| c.name.as_str()),
        _ => None,
    }
}

impl TableVersion {
    pub(super) fn new(def: &TableDefinition, pg: &Arc<Pg>) -> Self {
        Self {
            encoder: Encoder::new(def),
            def: def.clone(),
            pg: Arc::clone(pg),
        }
    }

    /// `name` in the definition's schema, quoted.
    fn qualified(&self, name: &str) -> String {
        match &self.def.schema {
            Some(s) => format!("{}.{}", quote_ident(s), quote_ident(name)),
            None => quote_ident(name),
        }
    }

    fn label(&self, name: &str) -> String {
        match &self.def.schema {
            Some(s) => format!("{s}.{name}"),
            None => name.to_owned(),
        }
    }

    /// The definition writing table `name`.
    fn def_for(&self, name: &str) -> TableDefinition {
        let mut d = self.def.clone();
        name.clone_into(&mut d.table);
        d.flush_max_rows = 0;
        d.exactly_once = false;
        d
    }

    fn pk(&self) -> String {
        quote_ident(id_column(&self.def).unwrap_or_default())
    }

    /// The definition's columns, quoted, comma-separated.
    fn columns(&self) -> String {
        self.def
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// What each of `names` is: `r` a table, `v` a view; absent when it does not exist.
    async fn kinds(&self, names: &[&str]) -> Result<HashMap<String, String>> {
        let q: Vec<String> = names.iter().map(|n| self.qualified(n)).collect();
        let what = format!("reading what {} are", names.join(", "));
        let rows = self
            .pg
            .run(&what, |c| {
                let (q, what) = (q.clone(), what.clone());
                async move {
                    c.query(
                        "SELECT n.name, c.relkind::text FROM unnest($1::text[]) AS n(name) \
                         JOIN pg_class c ON c.oid = to_regclass(n.name)",
                        &[&q],
                    )
                    .await
                    .map_err(err(what))
                }
            })
            .await?;
        let by_qualified: HashMap<String, String> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        Ok(names
            .iter()
            .zip(&q)
            .filter_map(|(n, q)| Some(((*n).to_owned(), by_qualified.get(q)?.clone())))
            .collect())
    }

    /// Runs `sql` (several statements) in one transaction, waiting at most a minute for the
    /// tables' locks (live writers hold them for a transaction each).
    async fn transaction(&self, what: &str, sql: &str) -> Result<()> {
        let body = format!("BEGIN; SET LOCAL lock_timeout = '60s'; {sql}; COMMIT");
        self.pg
            .run(what, |c| {
                let (body, what) = (body.clone(), what.to_owned());
                async move {
                    match c.batch_execute(&body).await {
                        Ok(()) => Ok(()),
                        Err(e) => {
                            let _ = c.batch_execute("ROLLBACK").await;
                            Err(err(what)(e))
                        }
                    }
                }
            })
            .await
    }

    async fn query(
        &self,
        what: &str,
        sql: String,
        params: Vec<Box<dyn ToSql + Sync + Send>>,
    ) -> Result<Vec<tokio_postgres::Row>> {
        let params = Arc::new(params);
        self.pg
            .run(what, |c| {
                let (sql, params, what) = (sql.clone(), Arc::clone(&params), what.to_owned());
                async move {
                    let p: Vec<&(dyn ToSql + Sync)> =
                        params.iter().map(|x| &**x as &(dyn ToSql + Sync)).collect();
                    c.query(&sql, &p).await.map_err(err(what))
                }
            })
            .await
    }
}

/// The free bytes of the filesystem holding `dir`, when the database's server address `host`
/// (empty: a unix socket) is this host's and `dir` exists here.
fn local_free_bytes(dir: &str, host: &str) -> Option<i64> {
    let local = host.is_empty()
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !local || !std::path::Path::new(dir).is_dir() {
        return None;
    }
    let st = rustix::fs::statvfs(dir).ok()?;
    i64::try_from(st.f_bavail.saturating_mul(st.f_frsize)).ok()
}

#[async_trait]
impl Version for TableVersion {
    fn noun(&self) -> &'static str {
        "table"
    }

    fn check(&self, options: &ReindexOptions) -> std::result::Result<(), String> {
        let t = self.def.label();
        if id_column(&self.def).is_none() {
            return Err(format!(
                "table {t}: its primary key is not one column filled from the change's id (`change = \"id\"`); the verification compares the source's document ids with the table's, so this is not supported yet"
            ));
        }
        // A rebuild from the topics writes each change as the live pillow does: its Kafka
        // position and publication time are known then, not from a source table.
        if options.from_kafka.is_none() {
            if let Some(c) = self.def.columns.iter().find(|c| {
                matches!(
                    c.change,
                    Some(
                        ChangeField::Topic
                            | ChangeField::Partition
                            | ChangeField::Offset
                            | ChangeField::PublishTimestamp
                    )
                )
            }) {
                return Err(format!(
                    "table {t}: column {} comes from the change's Kafka position or publication time, which a rebuild from the source table cannot know (rebuild it from the topics: --from-kafka)",
                    c.name
                ));
            }
        }
        Ok(())
    }

    fn serving(&self, _latest: Option<&ReindexRun>) -> String {
        self.def.table.clone()
    }

    fn names(
        &self,
        serving: &str,
        options: &ReindexOptions,
    ) -> std::result::Result<(String, String, String), String> {
        let ts = Utc::now().format("%Y%m%d%H%M%S").to_string();
        // Within PostgreSQL's 63 bytes: a long table name is cut (the timestamp keeps the
        // versions apart).
        let mut cut = serving.len().min(63 - 2 - ts.len());
        while !serving.is_char_boundary(cut) {
            cut -= 1;
        }
        let base = &serving[..cut];
        let new = options
            .new_index
            .clone()
            .unwrap_or_else(|| format!("{base}_r{ts}"));
        let old = format!("{base}_o{ts}");
        if new.len() > 63 {
            return Err(format!(
                "the table version name {new:?} is longer than PostgreSQL's 63 bytes: give a shorter one (--new-index)"
            ));
        }
        Ok((old, new, serving.to_owned()))
    }

    async fn exists(&self, name: &str) -> Result<bool> {
        Ok(self.kinds(&[name]).await?.get(name).map(String::as_str) == Some("r"))
    }

    async fn size(&self, name: &str) -> Result<(Option<i64>, Option<i64>)> {
        if !self.exists(name).await? {
            return Ok((None, None));
        }
        let (rows, bytes) = super::relation_size(&self.pg, &self.qualified(name)).await?;
        Ok((Some(rows), Some(bytes)))
    }

    async fn free_bytes(&self) -> Result<Option<i64>> {
        // PostgreSQL does not report its disk's free space to a client. When it runs on this
        // host (a unix socket or a loopback address) and its data directory can be read here
        // (`data_directory` is shown to superusers and pg_read_all_settings), the free space of
        // that directory's filesystem; otherwise unknown.
        let rows = self
            .query(
                "reading the database's data directory",
                "SELECT current_setting('data_directory'), coalesce(host(inet_server_addr()), '')"
                    .into(),
                Vec::new(),
            )
            .await;
        let (dir, host): (String, String) = match rows.as_deref() {
            Ok([r, ..]) => (r.get(0), r.get(1)),
            Ok([]) => return Ok(None),
            Err(e) => {
                tracing::debug!(error = %e, "reindex preflight: the database's free disk is unknown");
                return Ok(None);
            }
        };
        Ok(local_free_bytes(&dir, &host))
    }

    fn where_free(&self) -> &'static str {
        "the database's filesystem"
    }

    async fn create(&self, run: &ReindexRun) -> Result<Update> {
        let existed = self.exists(&run.new_index).await?;
        // The processor's own table creation: the definition's columns and primary key.
        let mut p =
            PgTableProcessor::new(self.def_for(&run.new_index), Arc::new(self.pg.sibling()))?;
        p.bootstrap_if_needed().await?;
        Ok(Update {
            step: Some(Step::Created),
            settings: Some(Value::Null),
            log: Some(format!(
                "{} table {}",
                if existed { "found" } else { "created" },
                self.label(&run.new_index)
            )),
            ..Update::default()
        })
    }

    fn writer(&self, name: &str, create_only: bool) -> Result<Box<dyn Processor>> {
        let p = PgTableProcessor::new(self.def_for(name), Arc::new(self.pg.sibling()))?;
        Ok(Box::new(if create_only { p.with_create_only() } else { p }))
    }

    async fn refresh(&self, _name: &str) -> Result<()> {
        Ok(()) // committed rows are read at once
    }

    async fn all_ids(&self, name: &str, domain: Option<&str>) -> Result<HashSet<String>> {
        let has_domain = self.def.columns.iter().any(|c| c.name == "domain");
        let (filter, params): (String, Vec<Box<dyn ToSql + Sync + Send>>) = match domain {
            Some(d) if has_domain => (
                format!(" WHERE {}::text = $1", quote_ident("domain")),
                vec![Box::new(d.to_owned())],
            ),
            _ => (String::new(), Vec::new()),
        };
        let sql = format!(
            "SELECT {}::text FROM {}{filter}",
            self.pk(),
            self.qualified(name)
        );
        let rows = self
            .query(
                &format!("listing the ids of table {}", self.label(name)),
                sql,
                params,
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn fetch(&self, name: &str, ids: &[String]) -> Result<HashMap<String, Value>> {
        let sql = format!(
            "SELECT x.{pk}::text, to_jsonb(x) FROM (SELECT {cols} FROM {t} WHERE {pk}::text = ANY($1)) x",
            pk = self.pk(),
            cols = self.columns(),
            t = self.qualified(name)
        );
        let rows = self
            .query(
                &format!("reading rows of table {}", self.label(name)),
                sql,
                vec![Box::new(ids.to_vec())],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn expected(&self, docs: &HashMap<String, String>) -> Result<HashMap<String, Value>> {
        let mut ids = Vec::new();
        let mut rows = Vec::new();
        for (id, text) in docs {
            let Ok(change) = super::source_row(id.clone(), text.clone(), &self.def.table, true)
            else {
                continue;
            };
            // A document the filter leaves out (or that does not convert) has no row.
            if let Ok(Action::Upsert(row)) = self.encoder.encode(&change) {
                ids.push(id.clone());
                rows.push(row);
            }
        }
        if rows.is_empty() {
            return Ok(HashMap::new());
        }
        // PostgreSQL renders the rows, in the columns' own types, as `fetch` reads them.
        let n = "__pillowtop_n";
        let arrays: Vec<String> = self
            .def
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("${}::{}[]", i + 1, c.column_type.sql()))
            .collect();
        let sql = format!(
            "SELECT to_jsonb(x) - '{n}' FROM unnest({}) WITH ORDINALITY AS x({}, {}) ORDER BY x.{}",
            arrays.join(", "),
            self.columns(),
            quote_ident(n),
            quote_ident(n)
        );
        let params: Vec<Box<dyn ToSql + Sync + Send>> =
            crate::processor::postgres::processor::transpose(&rows)
                .into_iter()
                .map(|col| Box::new(col) as Box<dyn ToSql + Sync + Send>)
                .collect();
        let rendered = self
            .query(
                &format!("rendering the expected rows of table {}", self.def.label()),
                sql,
                params,
            )
            .await?;
        Ok(ids
            .into_iter()
            .zip(rendered.iter().map(|r| r.get::<_, Value>(0)))
            .collect())
    }

    fn may_skip(&self) -> bool {
        true // the filter, documents missing or not converting
    }

    async fn domain_counts(&self, _name: &str) -> Result<Option<BTreeMap<String, u64>>> {
        Ok(None) // a table is compared by id and sample
    }

    async fn swap(&self, run: &ReindexRun) -> Result<u64> {
        let (t, new, old) = (&run.alias, &run.new_index, &run.old_index);
        let kinds = self.kinds(&[t, new, old]).await?;
        let kind = |n: &str| kinds.get(n).map(String::as_str);
        if kind(new) == Some("v") && kind(old) == Some("r") {
            return Ok(0); // swapped already (a resumed run)
        }
        let sql = if kind(t) == Some("r") {
            format!(
                "ALTER TABLE {tq} RENAME TO {o}; ALTER TABLE {nq} RENAME TO {t}; CREATE VIEW {nq} AS SELECT * FROM {oq}",
                tq = self.qualified(t),
                o = quote_ident(old),
                nq = self.qualified(new),
                t = quote_ident(t),
                oq = self.qualified(old),
            )
        } else {
            // A preindex: nothing served before.
            format!(
                "ALTER TABLE {} RENAME TO {}",
                self.qualified(new),
                quote_ident(t)
            )
        };
        let started = Instant::now();
        self.transaction(
            &format!("swapping table {} for {}", self.label(t), self.label(new)),
            &sql,
        )
        .await?;
        Ok(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    fn swapped(&self, run: &ReindexRun) -> String {
        format!(
            "table {} is the rebuilt version now (the one serving before is {})",
            self.label(&run.alias),
            self.label(&run.old_index)
        )
    }

    async fn unswap(&self, run: &ReindexRun) -> Result<String> {
        let (t, new, old) = (&run.alias, &run.new_index, &run.old_index);
        let kinds = self.kinds(&[t, new, old]).await?;
        let kind = |n: &str| kinds.get(n).map(String::as_str);
        if !(kind(new) == Some("r") && kind(old) == Some("v")) {
            let mut sql = Vec::new();
            if kind(new) == Some("v") {
                sql.push(format!("DROP VIEW {}", self.qualified(new)));
            }
            if kind(old) == Some("r") {
                sql.push(format!(
                    "ALTER TABLE {tq} RENAME TO {n}; ALTER TABLE {oq} RENAME TO {t}; CREATE VIEW {oq} AS SELECT * FROM {nq}",
                    tq = self.qualified(t),
                    n = quote_ident(new),
                    oq = self.qualified(old),
                    t = quote_ident(t),
                    nq = self.qualified(new),
                ));
            } else {
                // A preindex: there is no old version; the rebuilt one stops serving.
                sql.push(format!(
                    "ALTER TABLE {} RENAME TO {}",
                    self.qualified(t),
                    quote_ident(new)
                ));
            }
            let sql = sql.join("; ");
            self.transaction(&format!("swapping table {} back", self.label(t)), &sql)
                .await?;
        }
        Ok(format!(
            "table {} is the version serving before the run again; {} is no longer written",
            self.label(t),
            self.label(new)
        ))
    }

    async fn delete(&self, run: &ReindexRun, name: &str) -> Result<()> {
        let (new, old) = (&run.new_index, &run.old_index);
        let kinds = self.kinds(&[new, old]).await?;
        let mut sql: Vec<String> = [new, old]
            .iter()
            .filter(|n| kinds.get(n.as_str()).map(String::as_str) == Some("v"))
            .map(|n| format!("DROP VIEW {}", self.qualified(n)))
            .collect();
        if name != run.alias && kinds.get(name).map(String::as_str) == Some("r") {
            sql.push(format!("DROP TABLE {}", self.qualified(name)));
        }
        if sql.is_empty() {
            return Ok(());
        }
        self.transaction(
            &format!("deleting table {}", self.label(name)),
            &sql.join("; "),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(extra: &str) -> TableVersion {
        let def: TableDefinition = toml::from_str(&format!(
            r#"
            table = "xform"
            primary_key = ["doc_id"]
            columns = [
              {{ name = "doc_id", type = "text", change = "id" }},
              {{ name = "n", type = "integer", path = "form.n" }},
              {extra}
            ]
            "#
        ))
        .expect("parses");
        TableVersion::new(&def, &Arc::new(Pg::new("postgres://unused")))
    }

    fn options() -> ReindexOptions {
        ReindexOptions::new(super::super::SqlSource {
            table: "docs".into(),
            id_column: "id".into(),
            doc_column: "doc".into(),
        })
    }

    #[test]
    fn the_table_keeps_its_name_and_the_versions_are_named_after_it() {
        let v = version("");
        let (old, new, alias) = v.names("xform", &options()).expect("names");
        assert_eq!(alias, "xform");
        assert!(
            new.starts_with("xform_r") && new.len() == "xform_r".len() + 14,
            "{new}"
        );
        assert_eq!(old, format!("xform_o{}", &new["xform_r".len()..]));
        assert_eq!(v.serving(None), "xform");
        let mut o = options();
        o.new_index = Some("x".repeat(64));
        assert!(v
            .names("xform", &o)
            .expect_err("refused")
            .contains("63 bytes"));
        let long = "é".repeat(31); // 62 bytes
        let (old, new, _) = v.names(&long, &options()).expect("names");
        assert!(old.len() <= 63 && new.len() <= 63, "{old} {new}");
        assert!(
            new.starts_with(&"é".repeat(23)) && new.contains("_r"),
            "{new}"
        );
    }

    #[test]
    fn free_disk_is_read_only_for_a_database_on_this_host() {
        let here = std::env::temp_dir();
        let dir = here.to_str().expect("path");
        assert!(local_free_bytes(dir, "").is_some_and(|b| b > 0));
        assert!(local_free_bytes(dir, "127.0.0.1").is_some());
        assert!(local_free_bytes(dir, "::1").is_some());
        assert_eq!(local_free_bytes(dir, "10.1.2.3"), None, "another host");
        assert_eq!(
            local_free_bytes("/no/such/data/directory", ""),
            None,
            "not here"
        );
    }

    #[test]
    fn what_a_rebuild_from_a_table_cannot_reproduce_is_refused_with_its_reason() {
        assert_eq!(version("").check(&options()), Ok(()));
        let e = version(r#"{ name = "off", type = "bigint", change = "offset" },"#)
            .check(&options())
            .expect_err("refused");
        assert!(
            e.contains("column off") && e.contains("Kafka position"),
            "{e}"
        );
        // From the topics, the change's position is known: the same table is accepted.
        let mut o = options();
        o.from_kafka = Some(super::super::KafkaBackfill { since_ms: None });
        assert_eq!(
            version(r#"{ name = "off", type = "bigint", change = "offset" },"#).check(&o),
            Ok(())
        );
        let mut def = version("").def;
        def.primary_key = vec!["n".into()];
        let e = TableVersion::new(&def, &Arc::new(Pg::new("postgres://unused")))
            .check(&options())
            .expect_err("refused");
        assert!(e.contains("primary key"), "{e}");
    }
}
