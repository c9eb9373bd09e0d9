//! Read-your-writes over HTTP, against a private primary and its streaming replica: a write's
//! answer carries a token, a read that sends it back sees the write (1,000 of 1,000, with the
//! replica applying everything 2 s late), reads without one go to the replica, a made-up token
//! cannot pin reads to the primary, and a write through a read connection is a 500, not a
//! retryable 503.

use std::time::Duration;

use axum::extract::Path;
use axum::routing::{get, post};
use axum::Router;
use ballast_pool::{Conn, PoolConfig, ReadConn, ReadYourWritesLayer, ReplicaSet, SharedPool};
use ballast_testkit::cluster::PrivateCluster;
use ballast_testkit::db;
use diesel::sql_types::{BigInt, Bool};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use http::{header, Request, StatusCode};
use tower::ServiceExt;

type Pool = SharedPool<AsyncPgConnection>;

fn pool(url: &str) -> Pool {
    SharedPool::new(
        PoolConfig::from_url(&format!("{url}?connect_timeout=1&pool_timeout=2")).unwrap(),
    )
    .unwrap()
}

#[derive(diesel::QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

#[derive(diesel::QueryableByName)]
struct Seen {
    #[diesel(sql_type = Bool)]
    found: bool,
    #[diesel(sql_type = Bool)]
    standby: bool,
}

/// `POST /notes`: a note on the primary; its id.
async fn create(mut db: Conn<AsyncPgConnection>) -> Result<String, ballast_error::Error> {
    let note: Id = diesel::sql_query("INSERT INTO notes DEFAULT VALUES RETURNING id")
        .get_result(&mut *db)
        .await?;
    Ok(note.id.to_string())
}

/// `GET /notes/{id}`: whether the note is there, and whether a standby said so:
/// `found standby`.
async fn read(
    mut db: ReadConn<AsyncPgConnection>,
    Path(id): Path<i64>,
) -> Result<String, ballast_error::Error> {
    let seen: Seen = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM notes WHERE id = $1) AS found, \
                pg_is_in_recovery() AS standby",
    )
    .bind::<BigInt, _>(id)
    .get_result(&mut *db)
    .await?;
    Ok(format!("{} {}", seen.found, seen.standby))
}

/// `GET /oops`: a handler that writes through its read connection.
async fn oops(mut db: ReadConn<AsyncPgConnection>) -> Result<String, ballast_error::Error> {
    diesel::sql_query("INSERT INTO notes DEFAULT VALUES")
        .execute(&mut *db)
        .await?;
    Ok("written".into())
}

fn app(set: &ReplicaSet<AsyncPgConnection>) -> Router {
    Router::new()
        .route("/notes", post(create))
        .route("/notes/{id}", get(read))
        .route("/oops", get(oops))
        // A write that never reached the database.
        .route("/noop", post(|| async { "nothing written" }))
        .layer(ballast_pool::AddPoolLayer::new(set.primary().clone()))
        .layer(ReadYourWritesLayer::new(set.clone()))
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

async fn send(app: &Router, request: Request<axum::body::Body>) -> Answer {
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, 1 << 16).await.unwrap();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

async fn write(app: &Router) -> (i64, Answer) {
    let answer = send(
        app,
        Request::post("/notes")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    (answer.body.parse().unwrap(), answer)
}

/// Reads note `id`, with a token header or cookie if given: (found, on a standby).
async fn read_back(app: &Router, id: i64, token: Option<(&str, String)>) -> (bool, bool) {
    let mut request = Request::get(format!("/notes/{id}"));
    if let Some((name, value)) = token {
        request = request.header(name, value);
    }
    let answer = send(app, request.body(axum::body::Body::empty()).unwrap()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let (found, standby) = answer.body.split_once(' ').unwrap();
    (found == "true", standby == "true")
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.unwrap()
}

async fn wait_fresh(set: &ReplicaSet<AsyncPgConnection>) {
    let started = std::time::Instant::now();
    while !set.stats().replicas[0].fresh {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the replica never became fresh: {:?}",
            set.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A private primary with the `notes` table and its replica (with `settings`), their set (lag
/// read every 200 ms) and [`app`] on it.
async fn cluster(
    settings: &[&str],
) -> (
    PrivateCluster,
    PrivateCluster,
    ReplicaSet<AsyncPgConnection>,
    Router,
) {
    let primary = blocking(PrivateCluster::start).await.unwrap();
    let admin = db::pg_connect(&primary.url()).await;
    admin
        .batch_execute("CREATE TABLE notes (id bigserial PRIMARY KEY)")
        .await
        .unwrap();
    let replica = PrivateCluster::replica_of(&primary, settings).unwrap();
    let set = ReplicaSet::builder(pool(&primary.url()))
        .replica(pool(&replica.url()))
        .lag_check_interval(Duration::from_millis(200))
        .build();
    let app = app(&set);
    (primary, replica, set, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reads_its_own_writes_from_a_replica_2s_behind() {
    if db::postgres_url("a_client_reads_its_own_writes").is_none() {
        return;
    }
    let (_primary, replica, set, app) = cluster(&["recovery_min_apply_delay = '2s'"]).await;
    wait_fresh(&set).await;
    // The table reached the replica (2 s after it was made).
    let (old, _) = write(&app).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // A write's answer carries its token, as a header and as a short-lived cookie.
    let (_, answer) = write(&app).await;
    let token = answer.headers["ballast-read-after"]
        .to_str()
        .unwrap()
        .to_owned();
    let cookie = answer.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        token.parse::<ballast_pool::WalPosition>().is_ok(),
        "{token}"
    );
    assert_eq!(
        cookie,
        format!("ballast-read-after={token}; Max-Age=6; Path=/; HttpOnly; SameSite=Lax")
    );

    // Without the token, a read right after a write is the replica's, 2 s behind: it misses
    // the write (what every app with replicas meets).
    let mut missed = 0;
    for _ in 0..20 {
        let (id, _) = write(&app).await;
        let (found, standby) = read_back(&app, id, None).await;
        missed += usize::from(!found && standby);
    }
    println!("without a token: {missed} of 20 reads missed their own write");
    assert!(missed >= 18, "{missed} of 20");

    // POST, then GET with the token: the client sees its write every time, though the
    // replica shows it only 2 s later.
    let before = set.stats().routes;
    let mut seen = 0;
    for round in 0..1000 {
        let (id, answer) = write(&app).await;
        let token = answer.headers["ballast-read-after"]
            .to_str()
            .unwrap()
            .to_owned();
        let carried = if round % 2 == 0 {
            ("ballast-read-after", token)
        } else {
            ("cookie", format!("theme=dark; ballast-read-after={token}"))
        };
        seen += usize::from(read_back(&app, id, Some(carried)).await.0);
    }
    let after = set.stats().routes;
    println!("read-your-writes: {seen} of 1000 reads saw their own write; routes {after:?}");
    assert_eq!(seen, 1000);
    assert_eq!(
        after.primary_behind_token - before.primary_behind_token,
        1000,
        "a replica 2 s behind is not waited for: the primary serves at once"
    );

    // GETs without a token: the replica serves them (the old note is there by now).
    wait_fresh(&set).await;
    let mut on_replica = 0;
    for _ in 0..200 {
        let (found, standby) = read_back(&app, old, None).await;
        assert!(found);
        on_replica += usize::from(standby);
    }
    println!("reads without a token: {on_replica} of 200 on the replica");
    assert!(on_replica >= 180, "{on_replica} of 200");

    // A write through a read connection: the replica refuses it, the client gets a 500 that
    // says it is the server's bug (not a retryable 503), and the replica keeps taking reads.
    let answer = send(
        &app,
        Request::get("/oops")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        answer.body
    );
    let problem: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(problem["code"], "CRITICAL_ERROR", "{problem}");
    assert_eq!(problem["retryable"], false, "{problem}");
    assert!(
        read_back(&app, old, None).await.1,
        "the replica still takes reads"
    );
    drop(replica);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_waits_briefly_for_a_close_replica_and_a_made_up_one_is_capped() {
    if db::postgres_url("a_token_waits_briefly").is_none() {
        return;
    }
    let (_primary, replica, set, app) = cluster(&[]).await;
    wait_fresh(&set).await;

    // A replica that keeps up: reads with a token are served by it, after a short wait at
    // most, and see the write.
    let before = set.stats().routes;
    let mut on_replica = 0;
    for _ in 0..200 {
        let (id, answer) = write(&app).await;
        let token = answer.headers["ballast-read-after"]
            .to_str()
            .unwrap()
            .to_owned();
        let (found, standby) = read_back(&app, id, Some(("ballast-read-after", token))).await;
        assert!(found, "note {id} not seen");
        on_replica += usize::from(standby);
    }
    let after = set.stats().routes;
    println!("close replica: {on_replica} of 200 reads with a token on it; {after:?}");
    assert!(on_replica >= 180, "{on_replica} of 200: {after:?}");
    assert!(
        after.replica_after_wait > before.replica_after_wait,
        "{after:?}"
    );

    // A request that ran no statement, or failed, wrote nothing: no token.
    let answer = send(
        &app,
        Request::post("/noop")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        answer.headers.get("ballast-read-after").is_none(),
        "{:?}",
        answer.headers
    );
    assert!(answer.headers.get(header::SET_COOKIE).is_none());

    // A made-up token far beyond the primary is capped at the primary's position: the replica
    // serves it once it has replayed that much, not the primary forever.
    let (id, _) = write(&app).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut on_replica = 0;
    for _ in 0..50 {
        let (found, standby) = read_back(
            &app,
            id,
            Some(("ballast-read-after", "FFFFFFF/FFFFFFF".into())),
        )
        .await;
        assert!(found);
        on_replica += usize::from(standby);
    }
    println!("made-up token: {on_replica} of 50 reads on the replica");
    assert!(
        on_replica >= 45,
        "{on_replica} of 50: {:?}",
        set.stats().routes
    );
    drop(replica);
}
