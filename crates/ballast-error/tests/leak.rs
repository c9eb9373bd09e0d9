//! Nothing internal leaks (acceptance scenario 16): connection errors with a canary password in
//! the URL, syntax errors, constraint violations and panics, against the real PostgreSQL. No body
//! or header carries the password, the URL, `host:port` or SQL text; the log line carries the
//! driver code, once per failure.

use axum::body::Body;
use axum::extract::State;
use axum::routing::get;
use axum::Router;
use ballast_error::{Error, ErrorResponseLayer};
use ballast_pool::{PoolConfig, SharedPool};
use ballast_testkit::db::{self, PgDatabase};
use ballast_testkit::fake::FakeServer;
use ballast_testkit::logs::Captured;
use diesel_async::AsyncPgConnection;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

const CANARY: &str = "canary-Pa55-9917";
const SECRET_SQL: &str = "SELEC secret_column FROM";
const SECRET_VALUE: &str = "canary-row-value-5521";

#[derive(Clone)]
struct App {
    refusing: SharedPool<AsyncPgConnection>,
    unreachable: SharedPool<AsyncPgConnection>,
    database_url: String,
}

async fn client(url: &str) -> Result<tokio_postgres::Client, Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

fn router(app: App) -> Router {
    Router::new()
        .route(
            "/refusing",
            get(|State(app): State<App>| async move {
                app.refusing.get().await?;
                Ok::<_, Error>("unreachable")
            }),
        )
        .route(
            "/unreachable",
            get(|State(app): State<App>| async move {
                app.unreachable.get().await?;
                Ok::<_, Error>("unreachable")
            }),
        )
        .route(
            "/syntax",
            get(|State(app): State<App>| async move {
                let client = client(&app.database_url).await?;
                client.batch_execute(&format!("{SECRET_SQL} t")).await?;
                Ok::<_, Error>("unreachable")
            }),
        )
        .route(
            "/duplicate",
            get(|State(app): State<App>| async move {
                let client = client(&app.database_url).await?;
                let insert = format!("INSERT INTO items (name) VALUES ('{SECRET_VALUE}')");
                client.batch_execute(&insert).await?;
                Ok::<_, Error>("unreachable")
            }),
        )
        .route(
            "/panic",
            get(|| async {
                panic!("panicked holding postgres://app:{CANARY}@db.internal:5432/prod");
                #[allow(unreachable_code)]
                "never"
            }),
        )
        .with_state(app)
        .layer(ErrorResponseLayer::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_internal_leaks_and_the_log_carries_the_driver_code() {
    let Some(url) = db::postgres_url("nothing_internal_leaks") else {
        return;
    };
    let captured = Captured::default();
    let writer = captured.clone();
    // DEBUG: a client's error (the 409) is logged at that level.
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let database = PgDatabase::create(&url).await;
    db::pg_execute(
        database.url(),
        "CREATE TABLE items (id serial PRIMARY KEY, name text UNIQUE)",
    )
    .await;
    db::pg_execute(
        database.url(),
        &format!("INSERT INTO items (name) VALUES ('{SECRET_VALUE}')"),
    )
    .await;
    let fake = FakeServer::postgres("53300", "lo siento, ya tenemos demasiados clientes")
        .await
        .unwrap();
    let refusing_url = format!(
        "postgres://app:{CANARY}@{}/shop?sslmode=disable",
        fake.addr()
    );
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let unreachable_url = format!("postgres://app:{CANARY}@{closed_addr}/shop");
    let app = App {
        refusing: SharedPool::new(PoolConfig::from_url(&refusing_url).unwrap()).unwrap(),
        unreachable: SharedPool::new(PoolConfig::from_url(&unreachable_url).unwrap()).unwrap(),
        database_url: database.url().to_owned(),
    };
    let forbidden = [
        CANARY.to_owned(),
        "postgres://".to_owned(),
        fake.addr().to_string(),
        closed_addr.to_string(),
        "127.0.0.1".to_owned(),
        SECRET_SQL.to_owned(),
        SECRET_VALUE.to_owned(),
        "secret_column".to_owned(),
        "demasiados".to_owned(),
        "db.internal".to_owned(),
    ];
    let cases = [
        (
            "/refusing",
            StatusCode::SERVICE_UNAVAILABLE,
            Some("SQLSTATE 53300"),
        ),
        ("/unreachable", StatusCode::SERVICE_UNAVAILABLE, None),
        (
            "/syntax",
            StatusCode::INTERNAL_SERVER_ERROR,
            Some("SQLSTATE 42601"),
        ),
        // The client's data: a 409 that names no constraint, column or value.
        ("/duplicate", StatusCode::CONFLICT, Some("SQLSTATE 23505")),
        ("/panic", StatusCode::INTERNAL_SERVER_ERROR, None),
    ];
    for (path, status, driver_code) in cases {
        let request = Request::get(path).body(Body::empty()).unwrap();
        let response = router(app.clone()).oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
        assert_eq!(parts.status, status, "{path}: {body}");
        let headers = format!("{:?}", parts.headers);
        for secret in &forbidden {
            assert!(
                !body.contains(secret.as_str()),
                "{path}: body leaks {secret}: {body}"
            );
            assert!(
                !headers.contains(secret.as_str()),
                "{path}: headers leak {secret}"
            );
        }
        let logs = captured.take();
        let lines: Vec<&str> = logs
            .lines()
            .filter(|line| line.contains("request failed"))
            .collect();
        assert_eq!(lines.len(), 1, "{path}: logged once: {logs}");
        if let Some(code) = driver_code {
            assert!(
                lines[0].contains(code),
                "{path}: log carries {code}: {}",
                lines[0]
            );
        }
        assert!(lines[0].contains(&format!("path=\"{path}\"")) || lines[0].contains(path));
        for secret in [CANARY, SECRET_VALUE, "db.internal"] {
            assert!(
                !logs.contains(secret),
                "{path}: the log leaks {secret}: {logs}"
            );
        }
        println!("scenario 16 {path}: {status}, log: {}", lines[0]);
    }
}
