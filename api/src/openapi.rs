//! The OpenAPI document's frame: title, tags and the three ways to authenticate. The paths come
//! from the handlers' `#[utoipa::path]` attributes (see [`crate::routes::router`]).

use utoipa::{
    Modify, OpenApi,
    openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
};

/// The document's frame.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "clerk-sync API",
        description = "Users synced from Clerk and their calendar connections. Send a Clerk \
            session JWT (`Authorization: Bearer …` or the `__session` cookie) to read your own \
            user, or a service key (`Authorization: Bearer …`) to read any user."
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "users", description = "Users as synced from Clerk"),
        (name = "calendar", description = "Calendar connections and their tokens"),
        (name = "organizations", description = "Organizations as synced from Clerk, and their members"),
        (name = "ops", description = "Health, readiness, metrics, this document"),
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "session_jwt",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A Clerk session token (RS256); reaches the caller's own user only",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session_cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "__session",
                "The Clerk session token in the cookie Clerk's frontend SDKs set",
            ))),
        );
        components.add_security_scheme(
            "service_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("One of API_SERVICE_KEYS; reads any user"))
                    .build(),
            ),
        );
    }
}
