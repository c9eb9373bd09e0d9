//! Admission by time against the real PostgreSQL server: the load it must serve, and the load it
//! must refuse at once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ballast_core::scope::RequestScope;
use ballast_core::{Cause, Failure, Reach};
use ballast_pool::{PoolConfig, SharedPool};
use ballast_testkit::db;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

type Pool = SharedPool<AsyncPgConnection>;

/// A pool on `url` with pool parameters `params` (`connection_limit=10&...`).
fn pool(url: &str, params: &str) -> Pool {
    let separator = if url.contains('?') { '&' } else { '?' };
    let config = PoolConfig::from_url(&format!("{url}{separator}{params}")).unwrap();
    SharedPool::new(config).unwrap()
}

async fn sleep_on(conn: &mut AsyncPgConnection, seconds: f64) {
    diesel::sql_query(format!("SELECT pg_sleep({seconds})"))
        .execute(conn)
        .await
        .unwrap();
}

/// What closed-loop clients saw: the checkout waits of the served, and each refusal with how
/// long it took.
#[derive(Default)]
struct Seen {
    waits: Vec<Duration>,
    refusals: Vec<(Duration, Failure)>,
}

impl Seen {
    fn quantile(samples: &mut [Duration], quantile: f64) -> Duration {
        samples.sort();
        let index = ((samples.len() as f64 * quantile).ceil() as usize).max(1) - 1;
        samples.get(index).copied().unwrap_or_default()
    }
}

/// `clients` tasks, each checking out, holding the connection for a `hold_seconds` query and
/// checking out again, for `run` (after a refusal, a client thinks for 5 ms: the test's tasks
/// must not spin on one core).
async fn closed_loop(pool: &Pool, clients: usize, hold_seconds: f64, run: Duration) -> Seen {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let until = Instant::now() + run;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (pool, seen) = (pool.clone(), Arc::clone(&seen));
            tokio::spawn(async move {
                while Instant::now() < until {
                    let asked = Instant::now();
                    match pool.get().await {
                        Ok(mut conn) => {
                            seen.lock().unwrap().waits.push(asked.elapsed());
                            sleep_on(&mut conn, hold_seconds).await;
                        }
                        Err(failure) => {
                            seen.lock()
                                .unwrap()
                                .refusals
                                .push((asked.elapsed(), failure));
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    Arc::into_inner(seen).unwrap().into_inner().unwrap()
}

/// The reproduction inside the pool: 200 clients on a pool of 10 with 20 ms queries wait
/// about 0.4 s each, far inside `pool_timeout`. A fixed count of waiters (the old default, 100)
/// refused most of them; admission by time serves every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_that_drains_is_never_refused() {
    let Some(url) = db::postgres_url("a_queue_that_drains_is_never_refused") else {
        return;
    };
    let pool = pool(&url, "connection_limit=10&pool_timeout=5");
    let mut seen = closed_loop(&pool, 200, 0.02, Duration::from_secs(3)).await;
    let stats = pool.stats();
    let p99 = Seen::quantile(&mut seen.waits, 0.99);
    println!(
        "200 clients, pool of 10, 20 ms: {} served, {} refused, waits p99 {p99:?}, {:?}",
        seen.waits.len(),
        seen.refusals.len(),
        stats.refusals
    );
    // (`RunQueryDsl::first` shadows the slice's.)
    if let Some((_, failure)) = <[_]>::first(&seen.refusals) {
        panic!(
            "{} of {} refused: {}",
            seen.refusals.len(),
            seen.refusals.len() + seen.waits.len(),
            failure.report()
        );
    }
    assert_eq!(stats.shed, 0);
    assert!(seen.waits.len() >= 500, "{} served", seen.waits.len());
    pool.close().await;
}

/// A standing overload: 300 clients on a pool of 5 with 100 ms queries (six seconds of work
/// queued without admission, capacity 50 a second). The pool keeps serving at capacity, the
/// served wait near the target, and the rest are refused at once, honestly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standing_overload_is_refused_at_once_and_the_served_wait_near_the_target() {
    let Some(url) = db::postgres_url("a_standing_overload_is_refused_at_once") else {
        return;
    };
    let pool = pool(&url, "connection_limit=5&pool_timeout=20");
    let run = Duration::from_secs(6);
    let mut seen = closed_loop(&pool, 300, 0.1, run).await;
    let stats = pool.stats();
    let served = seen.waits.len();
    let wait_p99 = Seen::quantile(&mut seen.waits, 0.99);
    let wait_max = Seen::quantile(&mut seen.waits, 1.0);
    let (mut at_arrival, mut overdue) = (Vec::new(), 0);
    for (took, failure) in &seen.refusals {
        assert_eq!(failure.cause(), Cause::Overloaded, "{}", failure.report());
        assert!(failure.retryable());
        assert!(failure.is_known_outage(), "not retried within the request");
        assert_eq!(failure.reach(), Reach::NotSent);
        assert!(failure.retry_after().is_some(), "{}", failure.report());
        assert!(failure.public_message().contains("at capacity"));
        assert!(!failure.public_message().contains("became free in time"));
        if failure
            .detail()
            .is_some_and(|detail| detail.starts_with("Overdue"))
        {
            overdue += 1;
        } else {
            at_arrival.push(*took);
        }
    }
    let refused_p50 = Seen::quantile(&mut at_arrival, 0.5);
    println!(
        "300 clients, pool of 5, 100 ms: {served} served ({:.0}/s), waits p99 {wait_p99:?} max \
         {wait_max:?}; {} refused at arrival (p50 {refused_p50:?}), {overdue} overdue; {:?}",
        served as f64 / run.as_secs_f64(),
        at_arrival.len(),
        stats.refusals
    );
    // Capacity is 300 in 6 s; shedding must not cost the database its work.
    assert!(served >= 240, "{served} served");
    assert!(
        !at_arrival.is_empty(),
        "a standing queue refuses at arrival"
    );
    assert!(refused_p50 < Duration::from_millis(20), "{refused_p50:?}");
    // Without admission the served would wait up to 6 s; the target is 1 s, the standing queue is
    // recognised half a target after the waits passed it.
    assert!(wait_p99 <= Duration::from_secs(2), "{wait_p99:?}");
    assert_eq!(stats.shed, seen.refusals.len() as u64);
    assert_eq!(stats.refusals.overdue, overdue);
    assert!(stats.refusals.standing_queue > 0, "{:?}", stats.refusals);
    pool.close().await;
}

/// Rule 1: a checkout is refused at once when the wait it can expect is longer than its
/// request has left, and admitted when the request has the time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_that_cannot_be_served_before_its_deadline_is_refused_at_once() {
    let Some(url) = db::postgres_url("a_checkout_that_cannot_be_served_before_its_deadline") else {
        return;
    };
    let pool = pool(&url, "connection_limit=1&pool_timeout=20");
    // The pool learns its hold time: 200 ms.
    for _ in 0..2 {
        sleep_on(&mut pool.get().await.unwrap(), 0.2).await;
    }
    let held = pool.get().await.unwrap();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.get().await.map(drop) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Three ahead on one connection: about 600 ms. A request with 300 ms left cannot make it.
    let scope = RequestScope::new(Some(Instant::now() + Duration::from_millis(300)));
    let asked = Instant::now();
    let refused = scope
        .run(pool.get())
        .await
        .expect_err("cannot be served in time");
    let took = asked.elapsed();
    println!("refused in {took:?}: {}", refused.report());
    assert_eq!(refused.cause(), Cause::Overloaded);
    assert!(took < Duration::from_millis(50), "{took:?}");
    let public = refused.public_message();
    assert!(
        public.contains("longer than the") && public.contains("this request has"),
        "{public}"
    );
    let retry_after = refused.retry_after().unwrap();
    assert!(
        retry_after > Duration::from_millis(200) && retry_after < Duration::from_millis(500),
        "{retry_after:?}"
    );
    assert_eq!(pool.stats().refusals.expected_wait, 1);

    // With two seconds left, it waits its turn and is served.
    let scope = RequestScope::new(Some(Instant::now() + Duration::from_secs(2)));
    let admitted = tokio::spawn(scope.run({
        let pool = pool.clone();
        async move { pool.get().await.map(drop) }
    }));
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(held);
    admitted.await.unwrap().expect("served in time");
    for waiter in waiters {
        waiter.await.unwrap().unwrap();
    }
    assert_eq!(pool.stats().shed, 1);
}

/// `queue_limit` stays as an explicit cap: one checkout past it is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_limit_is_an_explicit_cap_and_no_checkout_outwaits_its_request() {
    let Some(url) = db::postgres_url("queue_limit_is_an_explicit_cap") else {
        return;
    };
    // One connection, two checkouts allowed to wait for it.
    let busy = pool(&url, "connection_limit=1&queue_limit=2&pool_timeout=20");
    let held = busy.get().await.unwrap();
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let busy = busy.clone();
            tokio::spawn(async move { busy.get().await.map(drop) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let shed = busy
        .get()
        .await
        .expect_err("a third waiter is one too many");
    let shed_took = started.elapsed();
    assert_eq!(shed.cause(), Cause::Overloaded, "{}", shed.report());
    assert!(shed.retryable());
    assert!(shed.is_known_outage(), "not retried within the request");
    assert_eq!(shed.reach(), Reach::NotSent);
    assert!(shed
        .public_message()
        .contains("2 requests are already waiting"));
    assert!(shed_took < Duration::from_millis(50), "{shed_took:?}");
    assert_eq!(busy.stats().refusals.queue_limit, 1);

    // Inside a request whose deadline is 300 ms away, a checkout gives up by then, whatever
    // `pool_timeout` says (nothing is known about the hold time yet, so it is admitted).
    let scope = RequestScope::new(Some(Instant::now() + Duration::from_millis(300)));
    let pool_for_scope = pool(&url, "connection_limit=1&pool_timeout=20");
    let _held_too = pool_for_scope.get().await.unwrap();
    let started = Instant::now();
    let within = scope
        .run(pool_for_scope.get())
        .await
        .expect_err("no connection frees up");
    let waited = started.elapsed();
    println!(
        "queue_limit: shed in {shed_took:?}; a checkout with 300 ms left waited {waited:?}: {}",
        within.report()
    );
    assert_eq!(within.cause(), Cause::PoolExhausted);
    assert!(waited < Duration::from_millis(600), "{waited:?}");
    assert_eq!(pool_for_scope.stats().refusals.timed_out, 1);
    drop(held);
    for waiter in waiters {
        waiter.await.unwrap().unwrap();
    }
}

fn capture() -> (
    ballast_testkit::logs::Captured,
    tracing::subscriber::DefaultGuard,
) {
    let captured = ballast_testkit::logs::Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

/// `leak_threshold`: a connection held past it is logged once, naming where it was checked out
/// and the request's path, and counted; one that came back in time is not.
#[tokio::test] // One thread: the pool's watch task logs where the test captures.
async fn a_connection_held_past_leak_threshold_is_named_once() {
    let Some(url) = db::postgres_url("a_connection_held_past_leak_threshold") else {
        return;
    };
    let (captured, _guard) = capture();
    let pool = pool(&url, "connection_limit=2&leak_threshold=0.2");
    drop(pool.get().await.unwrap());
    let scope = RequestScope::new(None);
    scope.set_path("/reports/yearly");
    let line = line!() + 1;
    let held = scope.run(pool.get()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let log = captured.take();
    println!("{log}");
    assert_eq!(log.matches("past leak_threshold").count(), 1, "once: {log}");
    assert!(log.contains(&format!("admission.rs:{line}")), "{log}");
    assert!(log.contains("/reports/yearly"), "{log}");
    assert_eq!(pool.stats().held_too_long, 1);
    drop(held);
    let quick = pool.get().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(quick);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pool.stats().held_too_long, 1, "returned in time");
    assert!(captured.take().is_empty());
}

/// `SHOW statement_timeout` on a connection of `pool`, checked out in the current scope.
async fn shown_statement_timeout(pool: &Pool) -> String {
    #[derive(diesel::QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Text)]
        statement_timeout: String,
    }
    let mut conn = pool.get().await.unwrap();
    let setting: Setting = diesel::sql_query("SHOW statement_timeout")
        .get_result(&mut *conn)
        .await
        .unwrap();
    setting.statement_timeout
}

/// `statement_timeout=deadline` on PostgreSQL: inside a request with 300 ms left, a statement
/// stops on the server by then; a checkout without a deadline gets the connection's own bound
/// back (the server's default, or the URL's fixed `statement_timeout`, whichever the URL says).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_deadline_bounds_statements_by_the_time_left() {
    let Some(url) = db::postgres_url("statement_timeout_deadline") else {
        return;
    };
    let pool = pool(&url, "connection_limit=1&statement_timeout=deadline");
    let show = |pool: Pool| async move { shown_statement_timeout(&pool).await };
    let scope = RequestScope::new(Some(Instant::now() + Duration::from_millis(300)));
    let started = Instant::now();
    let stopped = scope
        .run(async {
            let mut conn = pool.get().await?;
            diesel::sql_query("SELECT pg_sleep(5)")
                .execute(&mut *conn)
                .await
                .map_err(Failure::from)
        })
        .await
        .expect_err("stopped on the server");
    let took = started.elapsed();
    println!("stopped after {took:?}: {}", stopped.report());
    assert_eq!(
        stopped.cause(),
        Cause::StatementTimeout,
        "{}",
        stopped.report()
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(
        show(pool.clone()).await,
        "0",
        "the server's default is back"
    );

    // Both bounds: the URL gives one `statement_timeout`, the setter the other.
    let separator = if url.contains('?') { '&' } else { '?' };
    let config = PoolConfig::from_url(&format!(
        "{url}{separator}connection_limit=1&statement_timeout=2"
    ))
    .unwrap()
    .with_statement_deadline(true);
    let pool = Pool::new(config).unwrap();
    let scope = RequestScope::new(Some(Instant::now() + Duration::from_secs(60)));
    assert_eq!(
        scope.run(show(pool.clone())).await,
        "2s",
        "the smaller of the two"
    );
    let scope = RequestScope::new(Some(Instant::now() + Duration::from_millis(1500)));
    let inside = scope.run(show(pool.clone())).await;
    assert!(inside.ends_with("ms"), "{inside}");
    assert_eq!(show(pool.clone()).await, "2s", "the fixed one is back");
}

/// `statement_timeout=deadline` sends its `SET` only when the connection's bound is not already
/// right: a bound between the time left and a twentieth more is kept (a busy route whose
/// checkouts have about the same time left sends none after the first); a bound shorter than the
/// time left, or longer by more than a twentieth, is set again — never short of the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_deadline_is_set_again_only_when_the_time_left_differs() {
    let Some(url) = db::postgres_url("statement_timeout_deadline_set_again") else {
        return;
    };
    let pool = pool(&url, "connection_limit=1&statement_timeout=deadline");
    // The bound the connection has inside a request with `left` to go, in milliseconds.
    let bound = |left: Duration| {
        let pool = pool.clone();
        RequestScope::new(Some(Instant::now() + left)).run(async move {
            let shown = shown_statement_timeout(&pool).await;
            match shown.strip_suffix("ms") {
                Some(ms) => ms.parse::<u64>().unwrap(),
                None => shown.strip_suffix('s').unwrap().parse::<u64>().unwrap() * 1000,
            }
        })
    };
    let first = bound(Duration::from_secs(10)).await;
    assert!(
        (10_000..=10_500).contains(&first),
        "{first} ms for 10 s left"
    );
    let again = bound(Duration::from_millis(9_800)).await;
    assert_eq!(again, first, "kept for about the same time left");
    let shorter = bound(Duration::from_secs(5)).await;
    assert!(
        (5_000..=5_250).contains(&shorter),
        "{shorter} ms for 5 s left"
    );
    let longer = bound(Duration::from_millis(5_500)).await;
    assert!(
        (5_500..=5_775).contains(&longer),
        "{longer} ms for 5.5 s left: never short of the deadline"
    );
}
