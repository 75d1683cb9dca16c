//! The search engine through the `elasticsearch` crate: create an index, bulk index, search,
//! and a per-item mapping error in a bulk response.

use elasticsearch::http::request::JsonBody;
use elasticsearch::http::transport::Transport;
use elasticsearch::indices::{IndicesCreateParts, IndicesDeleteParts};
use elasticsearch::{BulkParts, Elasticsearch, SearchParts};
use serde_json::{json, Value};

use crate::support::require;

#[tokio::test(flavor = "multi_thread")]
async fn bulk_index_then_search() {
    let url = require!("TEST_ELASTICSEARCH_URL");
    let client = Elasticsearch::new(Transport::single_node(&url).expect("transport"));
    let index = pillowtop::testing::unique_name("smoke");
    let created = client
        .indices()
        .create(IndicesCreateParts::Index(&index))
        .body(json!({
            "settings": {"number_of_shards": 1, "number_of_replicas": 0},
            "mappings": {"properties": {"domain": {"type": "keyword"}, "count": {"type": "integer"}}}
        }))
        .send()
        .await
        .expect("create");
    assert!(
        created.status_code().is_success(),
        "{:?}",
        created.text().await
    );

    let mut body: Vec<JsonBody<Value>> = Vec::new();
    for (id, domain, count) in [
        ("a", "dimagi", json!(1)),
        ("b", "dimagi", json!(2)),
        ("c", "other", json!(3)),
        ("bad", "x", json!("abc")),
    ] {
        body.push(json!({"index": {"_id": id}}).into());
        body.push(json!({"domain": domain, "count": count}).into());
    }
    let bulk = client
        .bulk(BulkParts::Index(&index))
        .body(body)
        .refresh(elasticsearch::params::Refresh::True)
        .send()
        .await
        .expect("bulk");
    let resp: Value = bulk.json().await.expect("json");
    assert_eq!(resp["errors"], true, "one item has a mapping error");
    let items = resp["items"].as_array().expect("items");
    let statuses: Vec<(String, u64)> = items
        .iter()
        .map(|i| {
            (
                i["index"]["_id"].as_str().unwrap_or_default().to_owned(),
                i["index"]["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("a".into(), 201),
            ("b".into(), 201),
            ("c".into(), 201),
            ("bad".into(), 400)
        ]
    );
    assert_eq!(
        items[3]["index"]["error"]["type"],
        "mapper_parsing_exception"
    );

    let search = client
        .search(SearchParts::Index(&[&index]))
        .body(json!({"query": {"term": {"domain": "dimagi"}}, "sort": [{"count": "asc"}]}))
        .send()
        .await
        .expect("search");
    let found: Value = search.json().await.expect("json");
    let ids: Vec<&str> = found["hits"]["hits"]
        .as_array()
        .expect("hits")
        .iter()
        .filter_map(|h| h["_id"].as_str())
        .collect();
    assert_eq!(ids, ["a", "b"]);

    let deleted = client
        .indices()
        .delete(IndicesDeleteParts::Index(&[&index]))
        .send()
        .await
        .expect("delete");
    assert!(deleted.status_code().is_success());
}
