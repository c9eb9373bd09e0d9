//! The README's second service, `examples/bookmarks.rs`, as a process on PostgreSQL: everything
//! a new user's bookmarks API needs — a foreign key, pagination with a tag filter, two-table
//! transactions, exactly-once keyed creates, a cached route its writes invalidate, a background
//! job, health, metrics and a clean shutdown — in at most 25 ballast-specific lines.

mod support;

use std::time::Duration;

use ballast_testkit::db::{self, PgDatabase};
use support::{
    command_for, example_binary, get, send, start_command, terminate, wait_ready, Answer,
};

fn json(answer: &Answer) -> serde_json::Value {
    serde_json::from_str(&answer.body).unwrap_or_else(|_| panic!("not JSON: {}", answer.body))
}

async fn count(url: &str, sql: &str) -> i64 {
    let client = db::pg_connect(url).await;
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bookmarks_service_does_what_its_user_needs() {
    let Some(url) = db::postgres_url("the_bookmarks_service_does_what_its_user_needs") else {
        return;
    };
    let database = PgDatabase::create(&url).await;
    let mut server = start_command(command_for(
        example_binary("bookmarks"),
        &[
            ("DATABASE_URL", database.url()),
            // The job's first tick runs at once; the next not during the test, so the cached
            // route changes only by the writes under test.
            ("RECOUNT_EVERY", "3600"),
            ("RUST_LOG", "info"),
        ],
    ))
    .await;
    let addr = server.addr;
    wait_ready(addr, Duration::from_secs(10)).await;
    let post = |path: String, key: Option<&'static str>, body: String| async move {
        let headers: Vec<(&str, &str)> = key
            .map(|key| ("idempotency-key", key))
            .into_iter()
            .collect();
        support::request(
            addr,
            "POST",
            &path,
            &headers,
            Some(("application/json", &body)),
        )
        .await
    };

    let ada = post("/users".into(), None, r#"{"name":"ada"}"#.into()).await;
    assert_eq!(ada.status, 201, "{}", ada.body);
    let ada = json(&ada)["id"].as_i64().unwrap();
    let bookmarks = format!("/users/{ada}/bookmarks");

    // A keyed create runs once; its repeat is the same answer, replayed.
    let rust = r#"{"url":"https://www.rust-lang.org","tag":"rust"}"#;
    let first = post(bookmarks.clone(), Some("create-1"), rust.into()).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let again = post(bookmarks.clone(), Some("create-1"), rust.into()).await;
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body);
    let other = r#"{"url":"https://docs.rs","tag":"rust"}"#;
    let reused = post(bookmarks.clone(), Some("create-1"), other.into()).await;
    assert_eq!(reused.status, 422, "{}", reused.body);
    assert_eq!(json(&reused)["code"], "IDEMPOTENCY_KEY_REUSED");
    let rows = count(database.url(), "SELECT COUNT(*) FROM bookmarks").await;
    assert_eq!(rows, 1, "written once");

    // The database's refusals, through plain `?`: a user that does not exist (the foreign
    // key), a URL the CHECK refuses; neither transaction leaves a count behind.
    let nobody = post("/users/999999/bookmarks".into(), None, rust.into()).await;
    assert_eq!(nobody.status, 409, "{}", nobody.body);
    assert_eq!(json(&nobody)["code"], "CONSTRAINT_VIOLATION");
    let ftp = r#"{"url":"ftp://example.com","tag":"rust"}"#;
    let invalid = post(bookmarks.clone(), None, ftp.into()).await;
    assert_eq!(invalid.status, 422, "{}", invalid.body);

    // The cached route: the first read stores it.
    let popular = get(addr, "/popular").await;
    assert_eq!(popular.status, 200, "{}", popular.body);
    assert_eq!(json(&popular)[0]["tag"], "rust");

    // 24 more, two tags, in two-table transactions: the user's count follows.
    for n in 0..24 {
        let tag = if n % 3 == 0 { "db" } else { "web" };
        let body = format!(r#"{{"url":"https://example.com/{n}","tag":"{tag}"}}"#);
        let made = post(bookmarks.clone(), None, body).await;
        assert_eq!(made.status, 201, "{}", made.body);
    }
    let counted = count(
        database.url(),
        &format!("SELECT bookmarks FROM users WHERE id = {ada}"),
    )
    .await;
    assert_eq!(counted, 25);

    // Pages of 20, newest first, and the tag filter.
    let page_1 = json(&get(addr, &bookmarks).await);
    assert_eq!(page_1.as_array().unwrap().len(), 20);
    let page_2 = json(&get(addr, &format!("{bookmarks}?page=2")).await);
    assert_eq!(page_2.as_array().unwrap().len(), 5);
    assert!(page_1[0]["id"].as_i64() > page_1[19]["id"].as_i64());
    let db_only = json(&get(addr, &format!("{bookmarks}?tag=db")).await);
    assert_eq!(db_only.as_array().unwrap().len(), 8);
    assert!(db_only.as_array().unwrap().iter().all(|b| b["tag"] == "db"));

    // The writes declared what they change: /popular was refreshed, now led by "web".
    let popular = get(addr, "/popular").await;
    assert_eq!(json(&popular)[0]["tag"], "web", "{}", popular.body);
    assert_eq!(json(&popular)[0]["bookmarks"], 16);
    // A change the service did not make stays unseen until the cached answer is dropped: the
    // route is cached, not read each time.
    let client = db::pg_connect(database.url()).await;
    client
        .batch_execute(&format!(
            "INSERT INTO bookmarks (user_id, url, tag) \
             SELECT {ada}, 'https://elsewhere.example/' || n, 'zig' FROM generate_series(1, 30) n"
        ))
        .await
        .unwrap();
    let cached = get(addr, "/popular").await;
    assert_eq!(cached.body, popular.body, "served from the cache");

    // A delete is a two-table transaction too, and invalidates /popular.
    let first_id = json(&first)["id"].as_i64().unwrap();
    let deleted = send(addr, "DELETE", &format!("/bookmarks/{first_id}"), None).await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    let gone = send(addr, "DELETE", &format!("/bookmarks/{first_id}"), None).await;
    assert_eq!(gone.status, 404, "{}", gone.body);
    let refreshed = get(addr, "/popular").await;
    assert_eq!(json(&refreshed)[0]["tag"], "zig", "{}", refreshed.body);

    // Health and metrics, in one line each of the service.
    assert_eq!(get(addr, "/healthz").await.status, 200);
    assert_eq!(get(addr, "/readyz").await.status, 200);
    let metrics = get(addr, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains("ballast_cache_hits_total"),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains("db_client_connection_max"),
        "{}",
        metrics.body
    );

    // The job ticked; SIGTERM stops it, drains, closes the pool, exits 0.
    let (status, took) = terminate(&mut server, Duration::from_secs(10)).await;
    println!("bookmarks: exit {:?} {took:?} after SIGTERM", status.code());
    assert_eq!(status.code(), Some(0), "{}", server.log());
    let log = server.log();
    assert!(log.contains("recount tick"), "{log}");
    assert!(log.contains("background job finished"), "{log}");
}

/// The lines that exist only because of ballast, counted as the README says: the lines marked
/// `// ballast`, and the signatures that name a ballast type.
#[test]
fn the_bookmarks_service_needs_at_most_25_ballast_lines() {
    let root = env!("CARGO_MANIFEST_DIR");
    let source = std::fs::read_to_string(format!("{root}/examples/bookmarks.rs")).unwrap();
    let marked = source
        .lines()
        .filter(|line| line.trim_end().ends_with("// ballast"))
        .count();
    let ballast_types = [
        "Conn<",
        "Error>",
        "SharedPool<",
        "Failure>",
        "ShutdownHandle",
    ];
    let mut signatures = 0;
    let mut signature = String::new();
    for line in source.lines() {
        let trimmed = line.trim_start();
        if signature.is_empty() && !trimmed.starts_with("async fn ") && !trimmed.starts_with("fn ")
        {
            continue;
        }
        signature.push_str(trimmed);
        if trimmed.ends_with('{') {
            if ballast_types.iter().any(|name| signature.contains(name)) {
                signatures += 1;
            }
            signature.clear();
        }
    }
    println!("bookmarks: {marked} marked + {signatures} signatures");
    assert_eq!(
        (marked, signatures),
        (18, 7),
        "update the counts in the README and the example"
    );
    assert!(marked + signatures <= 25);
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    assert!(
        readme.contains("**25 lines**: the 18 marked `// ballast`"),
        "README.md states the bookmarks count"
    );
}
