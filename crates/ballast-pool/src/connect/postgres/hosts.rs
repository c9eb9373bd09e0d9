//! Opening a connection to the URL's hosts as libpq does: in order or shuffled, each within
//! `connect_timeout`, kept when its server is what `target_session_attrs` asks for.

use ballast_core::Failure;

use super::super::bounded;
use crate::config::PoolConfig;

/// Opens a connection to the one server `url` names (plain, TLS, or through PgBouncer), bounded
/// by `connect_timeout`.
async fn open_url(
    config: &PoolConfig,
    url: &str,
) -> Result<diesel_async::AsyncPgConnection, Failure> {
    type Conn = diesel_async::AsyncPgConnection;
    let pg_config: tokio_postgres::Config = url.parse()?;

    // The connection's socket and task live on the pool's I/O thread (`io.rs`).
    if config.pgbouncer() {
        let owned = config.clone();
        return bounded(
            config,
            crate::io::open_on_driver(
                async move { crate::pgbouncer::connect(&owned, pg_config).await },
            ),
        )
        .await;
    }
    #[cfg(feature = "tls")]
    if let Some(settings) = config.tls() {
        let tls = crate::tls::MakeRustls(crate::tls::client_config(settings)?);
        return bounded(
            config,
            crate::io::open_on_driver(async move {
                let (client, connection) = match pg_config.connect(tls).await {
                    Ok(connected) => connected,
                    // A certificate refused, a server without TLS: the deployment's to fix.
                    Err(error) if crate::tls::is_tls_failure(&error) => {
                        return Err(Failure::new(ballast_core::Cause::InvalidConfig)
                            .with_detail(format!("TLS: {error}"))
                            .with_source(error))
                    }
                    Err(error) => return Err(error.into()),
                };
                Ok(Conn::try_from_client_and_connection(client, connection).await?)
            }),
        )
        .await;
    }
    bounded(
        config,
        crate::io::open_on_driver(async move {
            // tokio-postgres's own connect_timeout covers only the TCP connect; `bounded`
            // covers the startup conversation too, where a hung server would otherwise hang us.
            let (client, connection) = pg_config.connect(tokio_postgres::NoTls).await?;
            Ok(Conn::try_from_client_and_connection(client, connection).await?)
        }),
    )
    .await
}

/// Opens a connection as the URL's hosts and `target_session_attrs` say, as libpq does: the
/// hosts in order (shuffled with `load_balance_hosts=random`), each within `connect_timeout`,
/// the first whose server is what the attributes ask for kept (`prefer-standby`: a standby if any
/// host is one, then any). Returns it with the index of its host.
pub(super) async fn open_target(
    config: &PoolConfig,
) -> Result<(diesel_async::AsyncPgConnection, Option<usize>), Failure> {
    use crate::config::SessionAttrs;
    let Some(target) = config.target() else {
        return Ok((Box::pin(open_url(config, config.driver_url())).await?, None));
    };
    let attrs = target.session_attrs;
    if target.hosts.len() == 1 && attrs == SessionAttrs::Any {
        return Ok((
            Box::pin(open_url(config, config.driver_url())).await?,
            Some(0),
        ));
    }
    let mut order: Vec<usize> = (0..target.hosts.len()).collect();
    if target.load_balance {
        fastrand::shuffle(&mut order);
    }
    let passes: &[SessionAttrs] = match attrs {
        SessionAttrs::PreferStandby => &[SessionAttrs::Standby, SessionAttrs::Any],
        _ => std::slice::from_ref(&attrs),
    };
    let mut last = None;
    for &wanted in passes {
        for &i in &order {
            let host = &target.hosts[i];
            let attempt = async {
                let mut conn = Box::pin(open_url(config, &target.url(Some(i)))).await?;
                let fits = session_fits(&mut conn, wanted).await?;
                Ok::<_, Failure>((conn, fits))
            };
            match bounded(config, attempt).await {
                Ok((conn, true)) => return Ok((conn, Some(i))),
                Ok((_, false)) => {
                    last = Some(
                        Failure::new(ballast_core::Cause::ServerUnavailable)
                            .with_public_message(match wanted {
                                SessionAttrs::ReadWrite | SessionAttrs::Primary => {
                                    "No server of the database accepts writes right now."
                                }
                                _ => {
                                    "No server of the database is of the kind asked for right now."
                                }
                            })
                            .with_detail(format!(
                                "{}:{} is not {} (target_session_attrs={})",
                                host.name,
                                host.port(),
                                wanted.as_str(),
                                attrs.as_str()
                            )),
                    );
                }
                Err(failure) => {
                    tracing::debug!(
                        host = %host.name,
                        port = host.port(),
                        failure = %failure.report(),
                        "connect to one of the URL's hosts failed; trying the next"
                    );
                    last = Some(failure);
                }
            }
        }
    }
    let failure = last.unwrap_or_else(|| {
        Failure::new(ballast_core::Cause::InvalidConfig).with_detail("the URL names no host")
    });
    Err(failure.with_reach(ballast_core::Reach::NotSent))
}

/// Whether the server `conn` is on is what `wanted` asks for.
async fn session_fits(
    conn: &mut diesel_async::AsyncPgConnection,
    wanted: crate::config::SessionAttrs,
) -> Result<bool, Failure> {
    use crate::config::SessionAttrs;
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Flag {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        flag: bool,
    }
    let (sql, expected) = match wanted {
        SessionAttrs::Any | SessionAttrs::PreferStandby => return Ok(true),
        SessionAttrs::ReadWrite => (
            "SELECT current_setting('transaction_read_only') = 'on' AS flag",
            false,
        ),
        SessionAttrs::ReadOnly => (
            "SELECT current_setting('transaction_read_only') = 'on' AS flag",
            true,
        ),
        SessionAttrs::Primary => ("SELECT pg_is_in_recovery() AS flag", false),
        SessionAttrs::Standby => ("SELECT pg_is_in_recovery() AS flag", true),
    };
    let flag: Flag = diesel::sql_query(sql).get_result(conn).await?;
    Ok(flag.flag == expected)
}
