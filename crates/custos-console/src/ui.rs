//! The page layout, the embedded stylesheet and script, error pages, and
//! the security headers every console and API response gets.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::auth::{Perm, Principal};

/// The stylesheet.
pub(crate) const CSS: &str = include_str!("../static/console.css");
/// The script.
pub(crate) const JS: &str = include_str!("../static/console.js");

/// Content Security Policy: nothing but our own origin, no inline script,
/// no framing, forms post only to us.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Adds the security headers to every response of the console router.
pub(crate) async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(), microphone=(), geolocation=()"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// Serves a static asset.
pub(crate) fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = body.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=300"),
    );
    resp
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="referrer" content="same-origin";
            title { (title) " · Custos" }
            link rel="icon" href="data:,";
            link rel="stylesheet" href="/console/static/console.css";
            script src="/console/static/console.js" defer {}
        }
    }
}

/// Which navigation entry is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Dashboard,
    Keys,
    Audit,
    Users,
    Account,
}

/// A page of the signed-in console.
pub(crate) fn page(title: &str, p: &Principal, csrf: &str, nav: Nav, body: Markup) -> Markup {
    let item = |target: Nav, href: &str, label: &str| {
        html! { a.nav.active[target == nav] href=(href) { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                div.shell {
                    nav.side {
                        div.brand { span.mark { "◆" } "Custos" }
                        (item(Nav::Dashboard, "/console/", "Dashboard"))
                        @if p.can(Perm::KeysRead) { (item(Nav::Keys, "/console/keys", "API keys")) }
                        @if p.can(Perm::AuditRead) { (item(Nav::Audit, "/console/audit", "Audit log")) }
                        @if p.can(Perm::UsersManage) { (item(Nav::Users, "/console/users", "Users")) }
                        (item(Nav::Account, "/console/account", "Account"))
                        div.spacer {}
                        div.who {
                            strong { (p.user.username) }
                            span { (p.role.as_str()) " · MFA ✓" }
                            form.signout method="post" action="/console/logout" {
                                input type="hidden" name="csrf" value=(csrf);
                                button.secondary.small type="submit" { "Sign out" }
                            }
                        }
                    }
                    main.main { (body) }
                }
            }
        }
    }
}

/// A page outside the signed-in console (sign-in, setup, enrolment).
pub(crate) fn bare(title: &str, wide: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                div.auth {
                    div.box.wide[wide] {
                        div.brand { span.mark { "◆" } "Custos" }
                        (body)
                    }
                }
            }
        }
    }
}

/// An error page.
pub(crate) fn error_page(status: StatusCode, message: &str) -> Markup {
    bare(
        status.canonical_reason().unwrap_or("Error"),
        false,
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("Error")) }
            p.sub { (message) }
            p { a.btn href="/console/" { "Back to the console" } }
        },
    )
}

/// A flash message.
pub(crate) fn flash(kind: &str, message: &str) -> Markup {
    html! { div class=(format!("flash {kind}")) { (message) } }
}

/// A secret shown once, with a copy button.
pub(crate) fn secret_box(id: &str, value: &str) -> Markup {
    html! {
        div.secret {
            code id=(id) { (value) }
            button.secondary.small type="button" data-copy=(id) { "Copy" }
        }
    }
}

/// Inline SVG (the QR code), trusted because we generated it.
pub(crate) fn raw_svg(svg: &str) -> Markup {
    let start = svg.find("<svg").unwrap_or(0);
    PreEscaped(svg[start..].to_owned())
}

/// A state badge.
pub(crate) fn badge(text: &str, kind: &str) -> Markup {
    html! { span class=(format!("badge {kind}")) { (text) } }
}
