//! The README's quickstart service as a process on PostgreSQL: CRUD answers with the right
//! statuses through plain `?`, every error is problem+json, health works, and SIGTERM drains,
//! stops the background job, closes the pool and exits 0.

mod support;

use std::time::{Duration, Instant};

use ballast_testkit::db::{self, Backends, PgDatabase};
use support::{command_for, example_binary, get, send, start_command, wait_ready};

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_serves_users_and_stops_cleanly() {
    let Some(url) = db::postgres_url("the_quickstart_serves_users_and_stops_cleanly") else {
        return;
    };
    let database = PgDatabase::create(&url).await;
    let app = db::unique_name("ballast_quickstart");
    let database_url = format!(
        "{}?application_name={app}&connection_limit=4",
        database.url()
    );
    let mut server = start_command(command_for(
        example_binary("quickstart"),
        &[
            ("DATABASE_URL", &database_url),
            ("BACKUP_EVERY", "0.2"),
            ("RUST_LOG", "info"),
        ],
    ))
    .await;
    let addr = server.addr;
    // Ready once its startup step has created the schema.
    wait_ready(addr, Duration::from_secs(10)).await;
    let post = |body: &'static str| send(addr, "POST", "/users", Some(("application/json", body)));

    let created = post(r#"{"name":"Ada","email":"ada@example.com"}"#).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = json(&created.body)["id"].as_i64().unwrap();
    let one = get(addr, &format!("/users/{id}")).await;
    assert_eq!(one.status, 200);
    assert_eq!(json(&one.body)["email"], "ada@example.com");
    assert_eq!(
        json(&get(addr, "/users").await.body)
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The errors users hit daily, each the client's: problem+json with its code.
    for (status, code, answer) in [
        (
            409,
            "CONSTRAINT_VIOLATION",
            post(r#"{"name":"Eve","email":"ada@example.com"}"#).await,
        ),
        (
            422,
            "INVALID_DATA",
            post(r#"{"name":"","email":"empty@example.com"}"#).await,
        ),
        (404, "NOT_FOUND", get(addr, "/users/999999").await),
        (400, "BAD_REQUEST", post(r#"{"name":"#).await),
        (400, "BAD_REQUEST", get(addr, "/users/abc").await),
        (404, "NOT_FOUND", get(addr, "/nowhere").await),
        (
            405,
            "METHOD_NOT_ALLOWED",
            send(addr, "PATCH", "/users", None).await,
        ),
    ] {
        assert_eq!(answer.status, status, "{}", answer.body);
        assert!(
            answer
                .head
                .contains("content-type: application/problem+json"),
            "{}",
            answer.head
        );
        assert_eq!(json(&answer.body)["code"], code, "{}", answer.body);
    }

    let updated = send(
        addr,
        "PUT",
        &format!("/users/{id}"),
        Some((
            "application/json",
            r#"{"name":"Ada L.","email":"ada@example.com"}"#,
        )),
    )
    .await;
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_eq!(json(&updated.body)["name"], "Ada L.");
    assert_eq!(
        send(addr, "DELETE", &format!("/users/{id}"), None)
            .await
            .status,
        204
    );
    assert_eq!(
        send(addr, "DELETE", &format!("/users/{id}"), None)
            .await
            .status,
        404
    );

    assert_eq!(get(addr, "/healthz").await.status, 200);
    let ready = get(addr, "/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert!(ready.head.contains("cache-control: no-store"));

    // The background job ticks; SIGTERM stops it, drains, closes the pool, exits 0.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = server.child.id().unwrap().to_string();
    let signalled = Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(Duration::from_secs(10), server.child.wait())
        .await
        .expect("exited")
        .unwrap();
    println!(
        "quickstart: exit {:?} {:?} after SIGTERM",
        status.code(),
        signalled.elapsed()
    );
    assert_eq!(status.code(), Some(0), "{}", server.log());
    let log = server.log();
    assert!(log.contains("backup tick"), "{log}");
    assert!(log.contains("background job finished"), "{log}");
    assert!(log.contains("close pool"), "{log}");
    assert!(
        db::pg_backends(&url, &Backends::ApplicationName(app))
            .await
            .is_empty(),
        "the pool was closed"
    );
}

/// A bad `DATABASE_URL` ends it at once with one line naming the setting.
#[tokio::test]
async fn the_quickstart_refuses_a_bad_url() {
    let (mut command, _dir) =
        command_for(example_binary("quickstart"), &[("DATABASE_URL", "garbage")]);
    let output = tokio::time::timeout(Duration::from_secs(10), command.output())
        .await
        .expect("exits at once")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
}

/// The README shows the quickstart whole: its copy is the file CI compiles and runs.
#[test]
fn the_readme_shows_the_quickstart_as_it_is() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let example = std::fs::read_to_string(format!("{root}/examples/quickstart.rs")).unwrap();
    let shown = readme
        .split_once("```rust,no_run\n")
        .and_then(|(_, rest)| rest.split_once("\n```\n"))
        .map(|(code, _)| format!("{code}\n"))
        .expect("the README has the quickstart block");
    assert_eq!(
        shown, example,
        "README.md's quickstart differs from examples/quickstart.rs"
    );
}
