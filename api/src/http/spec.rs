//! The OpenAPI document as served at `/openapi.yaml`, `/openapi.json` and `/docs`: generated
//! from the code, with the settings that shape what the server accepts filled in (the
//! largest `qty` of a hold), so a client generated from it knows the real bounds.

use poem::{Response, Route, endpoint::make_sync, get, web::Html};
use serde_json::{Value, json};

use super::openapi;

/// The document a server with `max_qty_per_hold` serves.
pub fn document(max_qty_per_hold: i64) -> Value {
    let mut spec: Value = serde_json::from_str(&openapi().spec()).expect("the spec is JSON");
    // poem-openapi's validators take literals only: the setting is written in here.
    spec["components"]["schemas"]["CreateHold"]["properties"]["qty"]["maximum"] =
        json!(max_qty_per_hold as f64);
    spec
}

/// The document as YAML (what `flashsale-api openapi` prints and `openapi.yaml` holds).
pub fn yaml(max_qty_per_hold: i64) -> String {
    serde_yaml::to_string(&document(max_qty_per_hold)).expect("YAML encoding cannot fail")
}

/// Adds `GET /openapi.yaml`, `GET /openapi.json` and `GET /docs` to `route`; other methods
/// get 405 like every route.
pub fn serve(route: Route, max_qty_per_hold: i64) -> Route {
    let doc = document(max_qty_per_hold);
    let json_text = serde_json::to_string_pretty(&doc).expect("JSON encoding cannot fail");
    let yaml_text = yaml(max_qty_per_hold);
    // The UI embeds its document; poem-openapi builds its page only from the generated one,
    // so the served document is put in its place.
    let generated = openapi();
    let ui = generated
        .swagger_ui_html()
        .replace(&generated.spec(), &json_text);
    let page = move |_| Html(ui.clone());
    route
        .at(
            "/openapi.yaml",
            get(make_sync(move |_| {
                Response::builder()
                    .content_type("application/x-yaml")
                    .body(yaml_text.clone())
            })),
        )
        .at(
            "/openapi.json",
            get(make_sync(move |_| {
                Response::builder()
                    .content_type("application/json")
                    .body(json_text.clone())
            })),
        )
        .at("/docs", get(make_sync(page.clone())))
        .at("/docs/", get(make_sync(page)))
}
