//! The login page.

use super::super::html::{escape, page};

/// The login page.
pub fn login_form(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\">{}</p>", escape(e)))
        .unwrap_or_default();
    page(
        "Log in",
        None,
        &format!(
            "{error}<form method=\"post\" action=\"/console/login\">\
             <p><label>Name <input name=\"name\" autocomplete=\"username\" required></label></p>\
             <p><label>Key <input name=\"key\" type=\"password\" autocomplete=\"current-password\" required></label></p>\
             <p><button>Log in</button></p></form>"
        ),
    )
}
