//! HTTP: the route table, extractors, the edge middleware and the handlers.

pub mod client;
pub mod devices;
pub mod edge;
pub mod extract;
pub mod forms;
pub mod mail_pages;
pub mod ops;
pub mod pages;

use actix_web::web;

/// Every route Gatehouse answers. Anything else is a 404 page; a known path with the
/// wrong method is a 405 page.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/").route(web::get().to(pages::home)))
        .service(
            web::resource("/login")
                .route(web::get().to(pages::login_page))
                .route(web::post().to(pages::login_submit)),
        )
        .service(
            web::resource("/register")
                .route(web::get().to(pages::register_page))
                .route(web::post().to(pages::register_submit)),
        )
        .service(web::resource("/logout").route(web::post().to(pages::logout)))
        .service(web::resource("/account").route(web::get().to(pages::account)))
        .service(web::resource("/account/devices").route(web::get().to(devices::devices_page)))
        .service(
            web::resource("/account/devices/revoke-others")
                .route(web::post().to(devices::revoke_others)),
        )
        .service(
            web::resource("/account/devices/revoke-all").route(web::post().to(devices::revoke_all)),
        )
        .service(
            web::resource("/account/devices/{session_id}/revoke")
                .route(web::post().to(devices::revoke_device)),
        )
        .service(web::resource("/account/activity").route(web::get().to(devices::activity_page)))
        .service(
            web::resource("/verify-email")
                .route(web::get().to(mail_pages::verify_email_page))
                .route(web::post().to(mail_pages::verify_email)),
        )
        .service(
            web::resource("/verify-email/resend")
                .route(web::post().to(mail_pages::resend_verification)),
        )
        .service(
            web::resource("/password/forgot")
                .route(web::get().to(mail_pages::forgot_page))
                .route(web::post().to(mail_pages::forgot_submit)),
        )
        .service(
            web::resource("/password/reset")
                .route(web::get().to(mail_pages::reset_page))
                .route(web::post().to(mail_pages::reset_submit)),
        )
        .service(
            web::resource("/account/email")
                .route(web::get().to(mail_pages::change_email_page))
                .route(web::post().to(mail_pages::change_email_submit)),
        )
        .service(
            web::resource("/account/email/confirm")
                .route(web::get().to(mail_pages::change_email_confirm_page))
                .route(web::post().to(mail_pages::change_email_confirm)),
        )
        .service(web::resource("/healthz").route(web::get().to(ops::healthz)))
        .service(web::resource("/readyz").route(web::get().to(ops::readyz)))
        .service(web::resource("/metrics").route(web::get().to(ops::metrics)))
        .service(web::resource("/static/css/gatehouse.css").route(web::get().to(ops::stylesheet)))
        .default_service(web::to(pages::not_found));
}
