//! The benchmark harness's quick modes, once per suite run, so it cannot rot.
//! They start their own api and worker processes on their own database and
//! queue prefix, and never restart a shared service.

use courier_tests::bench::chaos::{self, ChaosArgs};
use courier_tests::bench::throughput::{self, ThroughputArgs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_throughput_run_completes_every_order_and_reports_ratios() {
    let report = throughput::run(ThroughputArgs {
        orders: 200,
        concurrency: 16,
        rate: None,
        workers: 1,
        command_delay_ms: 0,
        timeout_secs: 120,
        probe_jobs: 500,
        db_pool: 4,
        worker_concurrency: 4,
        game_connections: 8,
    })
    .await
    .expect("throughput run");
    assert_eq!(report.accepted, 200);
    assert_eq!(report.completed, 200);
    assert!(
        report.end_to_end_per_s > 0.0
            && report.postgres_ceiling_jobs_per_s > 0.0
            && report.rabbitmq_ceiling_msgs_per_s > 0.0
    );
    assert!(report.end_to_end_vs_postgres.is_finite() && report.end_to_end_vs_rabbitmq.is_finite());
    assert!(report.pipeline_ceiling_per_s > 0.0 && report.end_to_end_vs_pipeline.is_finite());
    // Every order at least committed its accept and its completion.
    assert!(
        report.cost.transactions_per_order >= 1.0,
        "{:?}",
        report.cost
    );
    assert!(
        report.api_peak_rss_mib > 1.0 && report.worker_peak_rss_mib > 1.0,
        "RSS read from /proc"
    );
    assert!(
        report.latency_ms.p50 <= report.latency_ms.p99
            && report.latency_ms.p99 <= report.latency_ms.max
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_chaos_run_kills_workers_and_loses_nothing() {
    let report = chaos::run(ChaosArgs {
        orders: 300,
        workers: 3,
        concurrency: 8,
        kill_every_secs: 1.0,
        restart_services: false,
        quiesce_timeout_secs: 120,
        db_pool: 4,
    })
    .await
    .expect("chaos run");
    report.print();
    assert!(
        report.workers_killed >= 1,
        "the run must actually kill workers"
    );
    assert_eq!(report.accepted, 300);
    assert_eq!(report.in_database, 300);
    assert_eq!(report.lost, 0);
    assert_eq!(report.stuck, 0);
    assert_eq!(report.duplicates_unaccounted, 0);
    assert!(report.ok());
}
