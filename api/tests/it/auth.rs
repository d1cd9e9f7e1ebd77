//! Session JWTs reach only their own user; everything not a valid RS256 token of the configured
//! key, or a service key, is 401.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sea_orm::ConnectionTrait;
use serde_json::json;

use crate::helpers::{
    CLERK_KEYS, OTHER_KEYS, SERVICE_KEY, assert_error, claims, json_body, now, raw_jwt,
    session_token, sign_with, spawn_app, spawn_app_with,
};

#[tokio::test]
async fn a_signed_in_user_reads_their_own_user_through_every_route() {
    let app = spawn_app().await;
    let id = app.insert_user("user_ada", Some("ada@example.test")).await;
    let token = session_token("user_ada");

    for path in [
        "/me".to_owned(),
        format!("/users/{id}"),
        "/users/by-clerk-id/user_ada".to_owned(),
    ] {
        let response = app.get(&path, Some(&token)).await;
        assert_eq!(response.status(), 200, "{path}");
        let body = json_body(response).await;
        assert_eq!(body["id"], id.to_string(), "{path}");
        assert_eq!(body["clerk_user_id"], "user_ada");
        assert_eq!(body["email"], "ada@example.test");
        assert_eq!(body["first_name"], "Ada");
        assert_eq!(body["last_name"], "Lovelace");
        assert_eq!(body["google_calendar_connected"], false);
        assert_eq!(body["microsoft_calendar_connected"], false);
        assert!(body["created_at"].is_string() && body["updated_at"].is_string());
    }
}

#[tokio::test]
async fn the_user_body_has_the_public_profile_and_never_private_metadata() {
    let app = spawn_app().await;
    let id = app.insert_user("user_ada", Some("ada@example.test")).await;
    let fresh = app.get(&format!("/users/{id}"), Some(SERVICE_KEY)).await;
    let body = json_body(fresh).await;
    assert_eq!(body["public_metadata"], json!({}), "defaults");
    assert_eq!(body["banned"], false);
    assert_eq!(body["locked"], false);
    for field in [
        "username",
        "image_url",
        "external_id",
        "primary_phone_number",
        "last_sign_in_at",
        "clerk_created_at",
    ] {
        assert!(body[field].is_null(), "{field}: {body}");
    }
    app.db
        .conn
        .execute_unprepared(
            "UPDATE users SET username = 'ada', image_url = 'https://img.example/ada.png', \
               external_id = 'ext-1', primary_phone_number = '+15550000002', \
               public_metadata = '{\"plan\": \"pro\"}', \
               private_metadata = '{\"secret\": \"p\"}', \
               unsafe_metadata = '{\"secret\": \"u\"}', banned = true, locked = true, \
               last_sign_in_at = '2025-01-01T00:00:00.500Z', \
               clerk_created_at = '2024-12-31T00:00:00Z' WHERE clerk_user_id = 'user_ada'",
        )
        .await
        .unwrap();
    let token = session_token("user_ada");
    for (path, credential) in [
        ("/me".to_owned(), token.as_str()),
        (format!("/users/{id}"), token.as_str()),
        ("/users/by-clerk-id/user_ada".to_owned(), token.as_str()),
        (format!("/users/{id}"), SERVICE_KEY),
        ("/users/by-clerk-id/user_ada".to_owned(), SERVICE_KEY),
    ] {
        let response = app.get(&path, Some(credential)).await;
        assert_eq!(response.status(), 200, "{path}");
        let body = json_body(response).await;
        assert_eq!(body["username"], "ada", "{path}");
        assert_eq!(body["image_url"], "https://img.example/ada.png");
        assert_eq!(body["external_id"], "ext-1");
        assert_eq!(body["primary_phone_number"], "+15550000002");
        assert_eq!(body["public_metadata"], json!({"plan": "pro"}));
        assert_eq!(body["banned"], true);
        assert_eq!(body["locked"], true);
        let at = |field: &str| {
            chrono::DateTime::parse_from_rfc3339(body[field].as_str().unwrap())
                .unwrap()
                .timestamp_millis()
        };
        assert_eq!(at("last_sign_in_at"), 1_735_689_600_500);
        assert_eq!(at("clerk_created_at"), 1_735_603_200_000);
        let object = body.as_object().unwrap();
        assert!(
            !object.contains_key("private_metadata") && !object.contains_key("unsafe_metadata"),
            "{path}: {body}"
        );
        assert!(!body.to_string().contains("secret"), "{path}: {body}");
    }
}

#[tokio::test]
async fn the_session_cookie_is_accepted_like_the_bearer_header() {
    let app = spawn_app().await;
    app.insert_user("user_ada", None).await;
    let response = app
        .client
        .get(format!("{}/me", app.address))
        .header(
            "cookie",
            format!("theme=dark; __session={}", session_token("user_ada")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(json_body(response).await["clerk_user_id"], "user_ada");
}

#[tokio::test]
async fn another_users_id_answers_404_not_403() {
    let app = spawn_app().await;
    app.insert_user("user_ada", None).await;
    let other = app.insert_user("user_bob", Some("bob@example.test")).await;
    let token = session_token("user_ada");

    for path in [
        format!("/users/{other}"),
        "/users/by-clerk-id/user_bob".to_owned(),
        format!("/users/{other}/calendar-connections"),
    ] {
        assert_error(app.get(&path, Some(&token)).await, 404, "not_found").await;
    }
    let patch = app
        .patch(
            &format!("/users/{other}/calendar-status"),
            Some(&token),
            &json!({"provider": "google", "connected": false}),
        )
        .await;
    assert_error(patch, 404, "not_found").await;
}

#[tokio::test]
async fn a_signed_in_user_not_synced_yet_gets_404_from_me() {
    let app = spawn_app().await;
    let response = app.get("/me", Some(&session_token("user_new"))).await;
    assert_error(response, 404, "not_found").await;
}

#[tokio::test]
async fn no_credentials_answers_401_with_a_bearer_challenge() {
    let app = spawn_app().await;
    let id = app.insert_user("user_ada", None).await;
    for path in ["/me".to_owned(), format!("/users/{id}")] {
        let response = app.get(&path, None).await;
        assert_eq!(response.headers()["www-authenticate"], "Bearer", "{path}");
        assert_error(response, 401, "unauthenticated").await;
    }
}

#[tokio::test]
async fn expired_not_yet_valid_and_foreign_key_tokens_are_401() {
    let app = spawn_app().await;
    app.insert_user("user_ada", None).await;

    let mut expired = claims("user_ada");
    expired["exp"] = json!(now() - 30);
    expired["iat"] = json!(now() - 120);
    expired["nbf"] = json!(now() - 120);
    let mut not_yet = claims("user_ada");
    not_yet["nbf"] = json!(now() + 120);
    let mut issued_in_future = claims("user_ada");
    issued_in_future["iat"] = json!(now() + 120);

    for (what, token) in [
        ("expired", sign_with(&expired, &CLERK_KEYS)),
        ("not yet valid", sign_with(&not_yet, &CLERK_KEYS)),
        (
            "issued in the future",
            sign_with(&issued_in_future, &CLERK_KEYS),
        ),
        (
            "signed with another key",
            sign_with(&claims("user_ada"), &OTHER_KEYS),
        ),
        ("garbage", "not-a-token".to_owned()),
        ("three garbage parts", "a.b.c".to_owned()),
    ] {
        let message =
            assert_error(app.get("/me", Some(&token)).await, 401, "unauthenticated").await;
        assert!(!message.contains(&token), "{what}: token echoed");
    }
}

/// A token that passed is remembered until it expires (a frontend sends the same one for a
/// minute); only that very token: one with its signature or claims altered is checked afresh,
/// and a remembered token is refused once it has expired.
#[tokio::test]
async fn a_verified_token_is_remembered_only_as_itself_and_only_until_it_expires() {
    let app = spawn_app().await;
    app.insert_user("user_ada", None).await;
    app.insert_user("user_eve", None).await;
    let mut short = claims("user_ada");
    // Expired once `exp` is 5 s (Clerk's skew) in the past: 6 s from now.
    short["exp"] = json!(now() + 1);
    let token = sign_with(&short, &CLERK_KEYS);
    for _ in 0..3 {
        let response = app.get("/me", Some(&token)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(json_body(response).await["clerk_user_id"], "user_ada");
    }

    // The same claims with a flipped signature byte, and Eve's claims under Ada's signature.
    let (head_claims, signature) = token.rsplit_once('.').expect("three parts");
    let mut flipped = signature.as_bytes().to_vec();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    let flipped = format!(
        "{head_claims}.{}",
        String::from_utf8(flipped).expect("ascii")
    );
    let eve = sign_with(&claims("user_eve"), &CLERK_KEYS);
    let (eve_head_claims, _) = eve.rsplit_once('.').expect("three parts");
    let grafted = format!("{eve_head_claims}.{signature}");
    for forged in [flipped, grafted] {
        assert_error(app.get("/me", Some(&forged)).await, 401, "unauthenticated").await;
    }

    tokio::time::sleep(std::time::Duration::from_millis(6_500)).await;
    assert_error(app.get("/me", Some(&token)).await, 401, "unauthenticated").await;
}

#[tokio::test]
async fn tokens_within_the_five_second_skew_are_accepted() {
    let app = spawn_app().await;
    app.insert_user("user_ada", None).await;
    let mut almost = claims("user_ada");
    almost["nbf"] = json!(now() + 2);
    almost["iat"] = json!(now() + 2);
    let response = app.get("/me", Some(&sign_with(&almost, &CLERK_KEYS))).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn alg_none_and_hs256_signed_with_the_public_key_are_401() {
    let app = spawn_app().await;
    app.insert_user("user_ada", None).await;

    let none = raw_jwt(
        &json!({"alg": "none", "typ": "JWT"}),
        &claims("user_ada"),
        "",
    );
    let none_upper = raw_jwt(
        &json!({"alg": "None", "typ": "JWT"}),
        &claims("user_ada"),
        "",
    );
    // The classic key-confusion attack: HMAC keyed with the (public) PEM bytes.
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("user_ada"),
        &EncodingKey::from_secret(CLERK_KEYS.public_pem.as_bytes()),
    )
    .unwrap();
    let hs256_escaped = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("user_ada"),
        &EncodingKey::from_secret(CLERK_KEYS.public_pem.replace('\n', "\\n").as_bytes()),
    )
    .unwrap();

    for token in [none, none_upper, hs256, hs256_escaped] {
        assert_error(app.get("/me", Some(&token)).await, 401, "unauthenticated").await;
    }
}

#[tokio::test]
async fn with_authorized_parties_set_azp_must_be_present_and_listed() {
    let app = spawn_app_with(&[(
        "CLERK_AUTHORIZED_PARTIES",
        "https://app.example.test, http://localhost:3000",
    )])
    .await;
    app.insert_user("user_ada", None).await;

    let listed = session_token("user_ada");
    assert_eq!(app.get("/me", Some(&listed)).await.status(), 200);

    let mut wrong = claims("user_ada");
    wrong["azp"] = json!("https://evil.example.test");
    let mut missing = claims("user_ada");
    missing.as_object_mut().unwrap().remove("azp");
    for token in [
        sign_with(&wrong, &CLERK_KEYS),
        sign_with(&missing, &CLERK_KEYS),
    ] {
        assert_error(app.get("/me", Some(&token)).await, 401, "unauthenticated").await;
    }
}

#[tokio::test]
async fn without_authorized_parties_azp_is_not_checked() {
    let app = spawn_app().await;
    app.insert_user("user_ada", None).await;
    let mut other = claims("user_ada");
    other["azp"] = json!("https://anything.example.test");
    let response = app.get("/me", Some(&sign_with(&other, &CLERK_KEYS))).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_non_bearer_authorization_header_is_401() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(format!("{}/me", app.address))
        .header("authorization", format!("Basic {SERVICE_KEY}"))
        .send()
        .await
        .unwrap();
    assert_error(response, 401, "unauthenticated").await;
}

#[tokio::test]
async fn a_service_key_has_no_me() {
    let app = spawn_app().await;
    assert_error(app.get("/me", Some(SERVICE_KEY)).await, 403, "forbidden").await;
}

#[tokio::test]
async fn with_only_service_keys_configured_session_tokens_are_401() {
    let app = spawn_app_with(&[("CLERK_JWT_KEY", "")]).await;
    let id = app.insert_user("user_ada", None).await;
    let response = app.get("/me", Some(&session_token("user_ada"))).await;
    assert_error(response, 401, "unauthenticated").await;
    assert_eq!(
        app.get(&format!("/users/{id}"), Some(SERVICE_KEY))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn jwt_template_tokens_signed_with_the_instance_key_are_401() {
    let app = spawn_app().await;
    app.insert_user("user_ada", None).await;
    // What a JWT template typically yields: the user as `sub`, an audience, custom claims, no
    // session id, a long lifetime.
    let mut with_aud = claims("user_ada");
    with_aud["aud"] = json!("https://db.example.test");
    let mut with_aud_list = claims("user_ada");
    with_aud_list["aud"] = json!(["authenticated"]);
    let mut no_sid = claims("user_ada");
    no_sid.as_object_mut().unwrap().remove("sid");
    let mut empty_sid = claims("user_ada");
    empty_sid["sid"] = json!("");
    let mut long_lived = claims("user_ada");
    long_lived["exp"] = json!(now() + 86_400);
    let mut no_iat = claims("user_ada");
    no_iat.as_object_mut().unwrap().remove("iat");
    let template = json!({
        "sub": "user_ada", "aud": "convex", "email": "ada@example.test", "role": "authenticated",
        "iss": "https://clerk.example.test", "iat": now() - 10, "nbf": now() - 10,
        "exp": now() + 3600, "jti": "jti_template",
    });

    for (what, token_claims) in [
        ("aud string", with_aud),
        ("aud list", with_aud_list),
        ("no sid", no_sid),
        ("empty sid", empty_sid),
        ("a day long", long_lived),
        ("no iat", no_iat),
        ("template", template),
    ] {
        let token = sign_with(&token_claims, &CLERK_KEYS);
        let response = app.get("/me", Some(&token)).await;
        assert_eq!(response.status(), 401, "{what}");
        assert_error(response, 401, "unauthenticated").await;
    }
    // Clerk's token category in the JOSE header: a template category is refused even with
    // session-like claims; the session category passes.
    let categorised = |cat: &str| {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("ins_test".into());
        let header_json = json!({"alg": "RS256", "typ": "JWT", "kid": "ins_test", "cat": cat});
        let signed = jsonwebtoken::encode(
            &header,
            &claims("user_ada"),
            &EncodingKey::from_rsa_pem(CLERK_KEYS.private_pem.as_bytes()).unwrap(),
        )
        .unwrap();
        // Re-sign with the category in the header (jsonwebtoken's Header has no `cat`).
        let (_, rest) = signed.split_once('.').unwrap();
        let (payload, _) = rest.split_once('.').unwrap();
        use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
        let header_b64 = URL_SAFE_NO_PAD.encode(header_json.to_string());
        let message = format!("{header_b64}.{payload}");
        let key = EncodingKey::from_rsa_pem(CLERK_KEYS.private_pem.as_bytes()).unwrap();
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::RS256).unwrap();
        format!("{message}.{signature}")
    };
    assert_error(
        app.get("/me", Some(&categorised("cl_B7d4PD222AAA"))).await,
        401,
        "unauthenticated",
    )
    .await;
    assert_eq!(
        app.get("/me", Some(&categorised("cl_B7d4PD111AAA")))
            .await
            .status(),
        200
    );
    // A real session token of the same user still passes, and lives up to the bound.
    let mut five_minutes = claims("user_ada");
    five_minutes["exp"] = json!(now() - 10 + 300);
    for token_claims in [claims("user_ada"), five_minutes] {
        let token = sign_with(&token_claims, &CLERK_KEYS);
        assert_eq!(app.get("/me", Some(&token)).await.status(), 200);
    }
}

#[tokio::test]
async fn with_clerk_issuer_set_iss_must_match() {
    let app = spawn_app_with(&[("CLERK_ISSUER", "https://clerk.example.test/")]).await;
    app.insert_user("user_ada", None).await;
    assert_eq!(
        app.get("/me", Some(&session_token("user_ada")))
            .await
            .status(),
        200
    );
    let mut other = claims("user_ada");
    other["iss"] = json!("https://clerk.other-instance.test");
    let mut missing = claims("user_ada");
    missing.as_object_mut().unwrap().remove("iss");
    for token_claims in [other, missing] {
        let token = sign_with(&token_claims, &CLERK_KEYS);
        assert_error(app.get("/me", Some(&token)).await, 401, "unauthenticated").await;
    }
}
