//! Organizations: a member sees theirs and its members, anyone else gets the same `404` as for
//! an organization that does not exist; service keys see every one; `/me/organizations` lists
//! exactly the caller's linked memberships with their roles.

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    READ_KEY, SERVICE_KEY, TestApp, assert_error, json_body, session_token, spawn_app,
};

/// Inserts an organization and returns its id.
async fn insert_organization(app: &TestApp, clerk_id: &str, name: &str) -> Uuid {
    let id = Uuid::new_v4();
    app.db
        .conn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO organizations (id, clerk_organization_id, name, slug, image_url, \
               public_metadata, members_count, clerk_updated_at, clerk_created_at) \
             VALUES ($1, $2, $3, $4, 'https://img.example.test/o.png', '{\"plan\": \"pro\"}', 2, 1, \
               '2026-01-02T03:04:05Z')",
            [
                id.into(),
                clerk_id.into(),
                name.into(),
                name.to_lowercase().replace(' ', "-").into(),
            ],
        ))
        .await
        .unwrap();
    id
}

/// Inserts a membership of `clerk_user_id` (linked to `user_id` when given), joined at
/// `joined` (an RFC 3339 time).
async fn insert_membership(
    app: &TestApp,
    organization_id: Uuid,
    clerk_user_id: &str,
    user_id: Option<Uuid>,
    role: &str,
    joined: &str,
) -> Uuid {
    let id = Uuid::new_v4();
    app.db
        .conn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO organization_memberships (id, clerk_membership_id, organization_id, \
               clerk_user_id, user_id, role, clerk_updated_at, clerk_created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 1, $7::timestamptz)",
            [
                id.into(),
                format!("orgmem_{}", id.simple()).into(),
                organization_id.into(),
                clerk_user_id.into(),
                user_id.into(),
                role.into(),
                joined.into(),
            ],
        ))
        .await
        .unwrap();
    id
}

/// Ada (admin) and Bob (member) in Acme; Eve in nothing; a membership of Carol, whose user is
/// not stored yet. Returns (acme, ada, bob).
async fn acme(app: &TestApp) -> (Uuid, Uuid, Uuid) {
    let ada = app.insert_user("user_ada", Some("ada@example.test")).await;
    let bob = app.insert_user("user_bob", Some("bob@example.test")).await;
    app.insert_user("user_eve", Some("eve@example.test")).await;
    let acme = insert_organization(app, "org_acme", "Acme").await;
    insert_membership(
        app,
        acme,
        "user_ada",
        Some(ada),
        "org:admin",
        "2026-02-01T00:00:00Z",
    )
    .await;
    insert_membership(
        app,
        acme,
        "user_bob",
        Some(bob),
        "org:member",
        "2026-03-01T00:00:00Z",
    )
    .await;
    insert_membership(
        app,
        acme,
        "user_carol",
        None,
        "org:member",
        "2026-01-15T00:00:00Z",
    )
    .await;
    (acme, ada, bob)
}

fn assert_is_acme(body: &Value, acme: Uuid) {
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "clerk_organization_id",
            "created_at",
            "id",
            "image_url",
            "members_count",
            "name",
            "public_metadata",
            "slug",
            "updated_at"
        ],
        "{body}"
    );
    assert_eq!(body["id"], acme.to_string());
    assert_eq!(body["clerk_organization_id"], "org_acme");
    assert_eq!(body["name"], "Acme");
    assert_eq!(body["slug"], "acme");
    assert_eq!(body["image_url"], "https://img.example.test/o.png");
    assert_eq!(body["public_metadata"], json!({"plan": "pro"}));
    assert_eq!(body["members_count"], 2);
}

fn assert_acme_members(body: &Value, ada: Uuid, bob: Uuid) {
    let list = body.as_array().unwrap();
    assert_eq!(list.len(), 2, "{body}");
    assert_eq!(
        list[0],
        json!({
            "user_id": ada.to_string(), "clerk_user_id": "user_ada",
            "email": "ada@example.test", "first_name": "Ada", "last_name": "Lovelace",
            "role": "org:admin", "joined_at": "2026-02-01T00:00:00Z",
        })
    );
    assert_eq!(list[1]["user_id"], bob.to_string());
    assert_eq!(list[1]["clerk_user_id"], "user_bob");
    assert_eq!(list[1]["role"], "org:member");
    assert_eq!(list[1]["joined_at"], "2026-03-01T00:00:00Z");
}

#[tokio::test]
async fn a_member_sees_the_organization_and_its_members() {
    let app = spawn_app().await;
    let (acme, ada, bob) = acme(&app).await;
    for member in ["user_ada", "user_bob"] {
        let token = session_token(member);
        let response = app
            .get(&format!("/organizations/{acme}"), Some(&token))
            .await;
        assert_eq!(response.status(), 200, "{member}");
        assert_is_acme(&json_body(response).await, acme);

        let response = app
            .get(&format!("/organizations/{acme}/members"), Some(&token))
            .await;
        assert_eq!(response.status(), 200, "{member}");
        // Carol's membership waits for her user: nobody sees her as a member yet.
        assert_acme_members(&json_body(response).await, ada, bob);
    }
}

#[tokio::test]
async fn a_non_member_gets_the_same_404_as_for_an_unknown_organization() {
    let app = spawn_app().await;
    let (acme, _, _) = acme(&app).await;
    let unknown = Uuid::new_v4();
    // Eve is stored but no member; Carol has a membership not linked to any user row; Zed is
    // not stored at all.
    for (who, token) in [
        ("eve", session_token("user_eve")),
        ("carol", session_token("user_carol")),
        ("zed", session_token("user_zed")),
    ] {
        for path in [
            format!("/organizations/{acme}"),
            format!("/organizations/{acme}/members"),
        ] {
            let hidden = app.get(&path, Some(&token)).await;
            let hidden_status = hidden.status().as_u16();
            let hidden_body = json_body(hidden).await;
            let missing = app
                .get(
                    &path.replace(&acme.to_string(), &unknown.to_string()),
                    Some(&token),
                )
                .await;
            let missing_status = missing.status().as_u16();
            let missing_body = json_body(missing).await;
            assert_eq!(hidden_status, 404, "{who} {path}: {hidden_body}");
            assert_eq!(hidden_body["error"], "not_found");
            assert_eq!(
                (hidden_status, &hidden_body),
                (missing_status, &missing_body),
                "{who} {path}"
            );
        }
    }
}

#[tokio::test]
async fn service_keys_see_any_organization_and_its_members() {
    let app = spawn_app().await;
    let (acme, ada, bob) = acme(&app).await;
    let empty = insert_organization(&app, "org_empty", "Empty Co").await;
    for key in [SERVICE_KEY, READ_KEY] {
        let response = app.get(&format!("/organizations/{acme}"), Some(key)).await;
        assert_eq!(response.status(), 200);
        assert_is_acme(&json_body(response).await, acme);
        let response = app
            .get(&format!("/organizations/{acme}/members"), Some(key))
            .await;
        assert_eq!(response.status(), 200);
        assert_acme_members(&json_body(response).await, ada, bob);

        let response = app.get(&format!("/organizations/{empty}"), Some(key)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(json_body(response).await["name"], "Empty Co");
        let response = app
            .get(&format!("/organizations/{empty}/members"), Some(key))
            .await;
        assert_eq!(response.status(), 200);
        assert_eq!(json_body(response).await, json!([]));
    }
}

#[tokio::test]
async fn an_unknown_organization_is_404_and_a_bad_id_400() {
    let app = spawn_app().await;
    acme(&app).await;
    let unknown = Uuid::new_v4();
    for token in [SERVICE_KEY.to_owned(), session_token("user_ada")] {
        for path in [
            format!("/organizations/{unknown}"),
            format!("/organizations/{unknown}/members"),
        ] {
            let message = assert_error(app.get(&path, Some(&token)).await, 404, "not_found").await;
            assert_eq!(message, "no such organization");
        }
        for path in [
            "/organizations/not-a-uuid",
            "/organizations/not-a-uuid/members",
        ] {
            assert_error(app.get(path, Some(&token)).await, 400, "invalid_path").await;
        }
    }
    for path in [
        format!("/organizations/{unknown}"),
        format!("/organizations/{unknown}/members"),
        "/me/organizations".to_owned(),
    ] {
        assert_error(app.get(&path, None).await, 401, "unauthenticated").await;
    }
}

#[tokio::test]
async fn me_organizations_lists_exactly_the_callers_linked_memberships_with_roles() {
    let app = spawn_app().await;
    let (acme, ada, _) = acme(&app).await;
    let beta = insert_organization(&app, "org_beta", "Beta").await;
    let gamma = insert_organization(&app, "org_gamma", "Gamma").await;
    insert_organization(&app, "org_delta", "Delta").await;
    insert_membership(
        &app,
        beta,
        "user_ada",
        Some(ada),
        "org:member",
        "2026-04-01T00:00:00Z",
    )
    .await;
    // Ada's membership in Gamma is stored but not linked to her row: not hers yet.
    insert_membership(
        &app,
        gamma,
        "user_ada",
        None,
        "org:admin",
        "2026-05-01T00:00:00Z",
    )
    .await;

    let response = app
        .get("/me/organizations", Some(&session_token("user_ada")))
        .await;
    assert_eq!(response.status(), 200);
    let body = json_body(response).await;
    let list = body.as_array().unwrap();
    assert_eq!(list.len(), 2, "{body}");
    assert_is_acme(&list[0]["organization"], acme);
    assert_eq!(list[0]["role"], "org:admin");
    assert_eq!(list[0]["joined_at"], "2026-02-01T00:00:00Z");
    assert!(list[0]["created_at"].is_string());
    assert!(list[0]["updated_at"].is_string());
    assert_eq!(list[1]["organization"]["id"], beta.to_string());
    assert_eq!(list[1]["organization"]["name"], "Beta");
    assert_eq!(list[1]["role"], "org:member");
    assert_eq!(list[1]["joined_at"], "2026-04-01T00:00:00Z");

    let response = app
        .get("/me/organizations", Some(&session_token("user_bob")))
        .await;
    assert_eq!(response.status(), 200);
    let body = json_body(response).await;
    let list = body.as_array().unwrap();
    assert_eq!(list.len(), 1, "{body}");
    assert_eq!(list[0]["organization"]["id"], acme.to_string());
    assert_eq!(list[0]["role"], "org:member");

    let response = app
        .get("/me/organizations", Some(&session_token("user_eve")))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(json_body(response).await, json!([]));

    // Ada still cannot read Gamma through the unlinked membership.
    assert_error(
        app.get(
            &format!("/organizations/{gamma}"),
            Some(&session_token("user_ada")),
        )
        .await,
        404,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn me_organizations_answers_service_keys_and_unknown_users_as_me_does() {
    let app = spawn_app().await;
    acme(&app).await;
    for key in [SERVICE_KEY, READ_KEY] {
        let me = app.get("/me", Some(key)).await;
        let me_status = me.status().as_u16();
        let me_code = json_body(me).await["error"].clone();
        let response = app.get("/me/organizations", Some(key)).await;
        assert_eq!(response.status().as_u16(), me_status);
        assert_eq!(json_body(response).await["error"], me_code);
        assert_eq!(me_status, 403);
    }
    // Carol is not stored (lazy sync is off in tests): 404 as `/me`, even though a membership
    // of hers waits.
    let token = session_token("user_carol");
    assert_error(app.get("/me", Some(&token)).await, 404, "not_found").await;
    assert_error(
        app.get("/me/organizations", Some(&token)).await,
        404,
        "not_found",
    )
    .await;
}
