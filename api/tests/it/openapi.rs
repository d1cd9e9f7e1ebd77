//! `/openapi.json` is OpenAPI 3.x and describes every route the API serves, and nothing else.

use crate::helpers::{SERVICE_KEY, json_body, spawn_app};

/// Every route the API serves.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/me"),
    ("get", "/users"),
    ("get", "/users/{id}"),
    ("get", "/users/by-clerk-id/{clerk_user_id}"),
    ("patch", "/users/{id}/calendar-status"),
    ("get", "/users/{id}/calendar-connections"),
    ("get", "/users/{id}/calendar-connections/{provider}/token"),
    ("get", "/me/organizations"),
    ("get", "/organizations/{id}"),
    ("get", "/organizations/{id}/members"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

#[tokio::test]
async fn the_openapi_document_lists_every_route_and_method() {
    let app = spawn_app().await;
    let response = app.get("/openapi.json", None).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let doc = json_body(response).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );

    let paths = doc["paths"].as_object().unwrap();
    let mut documented: Vec<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| {
                    ["get", "put", "post", "patch", "delete", "head", "options"]
                        .contains(&k.as_str())
                })
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    documented.sort();
    let mut expected: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    expected.sort();
    assert_eq!(documented, expected);

    // Each described operation has responses, and the auth schemes are declared.
    for (method, path) in ROUTES {
        assert!(
            doc["paths"][path][method]["responses"]["200"].is_object(),
            "{method} {path}"
        );
    }
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    for scheme in ["session_jwt", "session_cookie", "service_key"] {
        assert!(schemes.contains_key(scheme), "{scheme}");
    }
    let user = &doc["components"]["schemas"]["User"]["properties"];
    for field in [
        "id",
        "clerk_user_id",
        "email",
        "first_name",
        "last_name",
        "microsoft_calendar_connected",
        "google_calendar_connected",
        "created_at",
        "updated_at",
    ] {
        assert!(user[field].is_object(), "User.{field}");
    }
    let connection = doc["components"]["schemas"]["CalendarConnection"]["properties"]
        .as_object()
        .unwrap();
    assert!(!connection.contains_key("access_token"));

    // The organization routes, and the fields their answers carry.
    for path in [
        "/me/organizations",
        "/organizations/{id}",
        "/organizations/{id}/members",
    ] {
        assert!(doc["paths"][path]["get"].is_object(), "{path}");
        assert!(
            doc["paths"][path]["get"]["responses"]["404"].is_object(),
            "{path}"
        );
    }
    let organization = &doc["components"]["schemas"]["Organization"]["properties"];
    for field in [
        "id",
        "clerk_organization_id",
        "name",
        "slug",
        "image_url",
        "public_metadata",
        "members_count",
        "created_at",
        "updated_at",
    ] {
        assert!(organization[field].is_object(), "Organization.{field}");
    }
    let membership = &doc["components"]["schemas"]["OrganizationMembership"]["properties"];
    for field in [
        "organization",
        "role",
        "joined_at",
        "created_at",
        "updated_at",
    ] {
        assert!(
            membership[field].is_object(),
            "OrganizationMembership.{field}"
        );
    }
    let member = &doc["components"]["schemas"]["OrganizationMember"]["properties"];
    for field in [
        "user_id",
        "clerk_user_id",
        "email",
        "first_name",
        "last_name",
        "role",
        "joined_at",
    ] {
        assert!(member[field].is_object(), "OrganizationMember.{field}");
    }
}

#[tokio::test]
async fn every_documented_route_is_served() {
    let app = spawn_app().await;
    let id = uuid::Uuid::new_v4();
    for (method, path) in ROUTES {
        let path = path
            .replace("{id}", &id.to_string())
            .replace("{clerk_user_id}", "user_x")
            .replace("{provider}", "google");
        let url = format!("{}{path}", app.address);
        let request = match *method {
            "get" => app.client.get(url),
            "patch" => app
                .client
                .patch(url)
                .json(&serde_json::json!({"provider": "google", "connected": false})),
            other => panic!("unexpected method {other}"),
        };
        let response = request.bearer_auth(SERVICE_KEY).send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert!(
            !text.contains("no such route") && status != 405,
            "{method} {path}: {status} {text}"
        );
    }
}
