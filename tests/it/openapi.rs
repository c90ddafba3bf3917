//! `/openapi.json` is generated from the code: it names every route of the
//! router with the scope its route layer enforces, every `$ref` resolves, and
//! schemathesis, generating requests for every operation from it, finds no
//! 5xx and no answer that breaks it (`scripts/api-check.sh`).

use std::collections::BTreeSet;

use courier_api::auth::Access;
use courier_tests::stack::TestStack;
use serde_json::Value;

fn refs(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref"
                    && let Some(r) = v.as_str()
                {
                    out.insert(r.to_owned());
                }
                refs(v, out);
            }
        }
        Value::Array(list) => list.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_document_names_every_route_with_its_scope() {
    let stack = TestStack::start_with(|_| {}, false).await;
    let doc: Value = stack
        .http
        .get(stack.url("/openapi.json"))
        .send()
        .await
        .expect("test step")
        .json()
        .await
        .expect("test step");
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    let table = courier_api::routes::route_table();
    for route in &table {
        let method = route.method.as_str().to_ascii_lowercase();
        let op = &paths
            .get(route.path)
            .unwrap_or_else(|| panic!("{} is not in the document", route.path))[&method];
        assert!(
            op.is_object(),
            "{} {} is not in the document",
            route.method,
            route.path
        );
        match route.access {
            Access::Scope(scope) => assert_eq!(
                op["security"],
                serde_json::json!([{ "bearer": [scope] }]),
                "{} {}",
                route.method,
                route.path
            ),
            Access::Public => assert!(
                op["security"].is_array(),
                "{} {} says nothing about its authentication",
                route.method,
                route.path
            ),
        }
        assert_eq!(
            op["responses"]["4XX"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody",
            "{} {} documents its errors",
            route.method,
            route.path
        );
    }
    let documented: usize = paths
        .values()
        .map(|p| p.as_object().expect("test step").len())
        .sum();
    assert_eq!(
        documented,
        table.len(),
        "the document has no operation the router lacks"
    );
    let mut all = BTreeSet::new();
    refs(&doc, &mut all);
    for r in &all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected $ref {r}"));
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "$ref {r} does not resolve"
        );
    }
    for scheme in [
        "bearer",
        "stripe_signature",
        "standard_webhook_signature",
        "supplier_api_key",
    ] {
        assert!(
            doc["components"]["securitySchemes"][scheme].is_object(),
            "security scheme {scheme}"
        );
    }
    stack.teardown().await;
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_off_the_document() {
    let (stack, _game) = TestStack::with_rcon_product("say hi {username}").await;
    // Some data for the reads to find, and real answers checked against the
    // document (generated requests mostly reach 4xx paths).
    let (status, order) = stack.post_order("p", "Steve", None).await;
    assert!(status.is_success());
    let id = order["id"].as_str().expect("id").to_owned();
    stack
        .wait_for_order(&id, "completed", std::time::Duration::from_secs(20))
        .await;
    let samples = [
        ("/v1/orders/{reference}", format!("/v1/orders/{id}")),
        (
            "/v1/orders/{reference}",
            format!("/v1/orders/{id}?expand=full"),
        ),
        ("/v1/products", "/v1/products".to_owned()),
        ("/v1/game-servers", "/v1/game-servers".to_owned()),
        (
            "/v1/admin/dead-letters",
            "/v1/admin/dead-letters".to_owned(),
        ),
        ("/v1/admin/held", "/v1/admin/held".to_owned()),
        ("/readyz", "/readyz".to_owned()),
    ]
    .iter()
    .map(|(t, p)| format!("{t}|{p}"))
    .collect::<Vec<_>>()
    .join(" ");
    let output = tokio::process::Command::new("bash")
        .env("API_CHECK_SAMPLES", &samples)
        .arg("scripts/api-check.sh")
        .arg(&stack.base)
        .arg(&stack.admin_key)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .await
        .expect("bash runs scripts/api-check.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "scripts/api-check.sh failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status,
    );
    assert!(stdout.contains("validates as OpenAPI 3.1"), "{stdout}");
    assert_eq!(
        stdout.matches("answers as").count(),
        7,
        "every sample was checked: {stdout}"
    );
    assert!(stdout.contains("passed"), "{stdout}");
    stack.teardown().await;
}
