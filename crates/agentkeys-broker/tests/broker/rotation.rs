use agentkeys_broker::cli::KeysCommand;
use agentkeys_broker::clock::Clock;
use agentkeys_broker::commands::run_keys;
use agentkeys_broker::keys::{MAX_PUBLISHED_KEYS, PUBLICATION_MARGIN_SECONDS};
use reqwest::StatusCode;

use crate::app::{TestApp, verify_jwt};

fn store_args(app: &TestApp) -> agentkeys_broker::cli::StoreArgs {
    let settings = &app.state.settings;
    agentkeys_broker::cli::StoreArgs {
        data_dir: app.data_dir(),
        database_url: Some(settings.database_url.clone()),
        key_encryption_key_file: settings.key_encryption_key_file.clone(),
    }
}

fn kids(jwks: &serde_json::Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn rotation_overlaps_then_retires_the_old_key() {
    let app = TestApp::start().await;
    let (_, s) = app.sign_in().await;
    let old_token = app.mint_jwt(&s.session_token).await;
    let old_kid = kids(&app.jwks().await)[0].clone();

    run_keys(
        &store_args(&app),
        KeysCommand::Rotate {
            overlap_seconds: 3600,
        },
        app.clock.now(),
    )
    .await
    .unwrap();
    app.reload_keys().await;

    // Published before it signs: the JWKS lists the new key, but the old one still signs.
    let during = kids(&app.jwks().await);
    assert_eq!(during.len(), 2);
    assert_eq!(during[0], old_kid, "the active key stays first");
    let new_kid = during[1].clone();
    let t = app.mint_jwt(&s.session_token).await;
    assert_eq!(
        jsonwebtoken::decode_header(&t).unwrap().kid.as_deref(),
        Some(old_kid.as_str())
    );

    // After the overlap the new key signs and comes first; old tokens still verify.
    app.clock.advance(3600);
    app.reload_keys().await;
    let after = kids(&app.jwks().await);
    assert_eq!(after, [new_kid.clone(), old_kid.clone()]);
    let fresh = app.mint_jwt(&s.session_token).await;
    assert_eq!(
        jsonwebtoken::decode_header(&fresh).unwrap().kid.as_deref(),
        Some(new_kid.as_str())
    );
    assert!(
        verify_jwt(&app, &old_token, "sts.amazonaws.com")
            .await
            .is_ok(),
        "old token verifies during overlap"
    );

    // Once every token the old key signed has expired (plus margin), it leaves the JWKS and
    // its tokens stop verifying.
    app.clock.advance(3600 + PUBLICATION_MARGIN_SECONDS);
    let last = kids(&app.jwks().await);
    assert_eq!(last, std::slice::from_ref(&new_kid));
    let err = verify_jwt(&app, &old_token, "sts.amazonaws.com")
        .await
        .unwrap_err();
    assert!(err.contains("not in the JWKS"), "{err}");
    assert!(verify_jwt(&app, &fresh, "sts.amazonaws.com").await.is_ok());
}

#[tokio::test]
async fn the_jwks_never_exceeds_its_bound() {
    let app = TestApp::start().await;
    for _ in 1..MAX_PUBLISHED_KEYS {
        run_keys(
            &store_args(&app),
            KeysCommand::Rotate {
                overlap_seconds: 3600,
            },
            app.clock.now(),
        )
        .await
        .unwrap();
    }
    let err = run_keys(
        &store_args(&app),
        KeysCommand::Rotate {
            overlap_seconds: 3600,
        },
        app.clock.now(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("already published"), "{err}");
    app.reload_keys().await;
    assert_eq!(kids(&app.jwks().await).len(), MAX_PUBLISHED_KEYS);
}

#[tokio::test]
async fn a_withdrawn_key_leaves_at_once_and_generate_refuses_a_second_active_key() {
    let app = TestApp::start().await;
    let (_, s) = app.sign_in().await;
    let token = app.mint_jwt(&s.session_token).await;
    let kid = kids(&app.jwks().await)[0].clone();
    let now = app.clock.now();

    let err = run_keys(&store_args(&app), KeysCommand::Generate, now)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("rotate"), "{err}");
    let err = run_keys(
        &store_args(&app),
        KeysCommand::Retire {
            kid: kid.clone(),
            immediately: false,
        },
        now,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("only key"), "{err}");

    // Compromise drill: rotate with no overlap, withdraw the old key.
    run_keys(
        &store_args(&app),
        KeysCommand::Rotate { overlap_seconds: 0 },
        now,
    )
    .await
    .unwrap();
    run_keys(
        &store_args(&app),
        KeysCommand::Retire {
            kid: kid.clone(),
            immediately: true,
        },
        now,
    )
    .await
    .unwrap();
    app.clock.advance(1);
    app.reload_keys().await;
    let published = kids(&app.jwks().await);
    assert_eq!(published.len(), 1);
    assert_ne!(published[0], kid);
    assert!(verify_jwt(&app, &token, "sts.amazonaws.com").await.is_err());
    assert_eq!(
        app.mint(&s.session_token, None).await.status(),
        StatusCode::OK
    );
    let kinds: Vec<String> = app
        .audit()
        .await
        .into_iter()
        .map(|e| e.kind)
        .filter(|k| k.starts_with("key."))
        .collect();
    assert_eq!(kinds, ["key.generate", "key.rotate", "key.withdraw"]);
}

#[tokio::test]
async fn a_running_broker_picks_up_a_rotation_without_restart() {
    let app = TestApp::start().await;
    let maintenance = agentkeys_broker::spawn_maintenance(app.state.clone());
    let first = kids(&app.jwks().await)[0].clone();
    run_keys(
        &store_args(&app),
        KeysCommand::Rotate { overlap_seconds: 0 },
        app.clock.now(),
    )
    .await
    .unwrap();
    app.clock.advance(1);
    // key_refresh_seconds is 1 in tests; poll for up to 15 s.
    let mut seen = Vec::new();
    for _ in 0..150 {
        seen = kids(&app.jwks().await);
        if seen.len() == 2 && seen[0] != first {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    maintenance.abort();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_ne!(seen[0], first, "the new key became active and first");
}

#[tokio::test]
async fn a_kek_rotation_reseals_every_key_and_only_the_new_kek_opens_them() {
    use agentkeys_broker::keys::{Kek, KeyRing, Vault};
    let keks = crate::app::private_tempdir();
    let old_file = crate::app::write_kek(keks.path());
    let old_path = old_file.clone();
    let app = TestApp::start_with(move |s| s.key_encryption_key_file = Some(old_path)).await;
    let args = store_args(&app);
    run_keys(
        &args,
        KeysCommand::Rotate {
            overlap_seconds: 60,
        },
        app.clock.now(),
    )
    .await
    .unwrap();
    let before = app.state.store.signing_keys().await.unwrap();
    assert_eq!(before.len(), 2);
    assert!(before.iter().all(|k| k.sealed_private_key.is_some()));

    let new_dir = crate::app::private_tempdir();
    let new_file = crate::app::write_kek(new_dir.path());
    let rotate = |file: std::path::PathBuf| KeysCommand::RotateKek { new_key_file: file };
    run_keys(&args, rotate(new_file.clone()), app.clock.now())
        .await
        .unwrap();

    let (old, new) = (Kek::load(&old_file).unwrap(), Kek::load(&new_file).unwrap());
    let after = app.state.store.signing_keys().await.unwrap();
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a.kid, b.kid);
        let sealed = a.sealed_private_key.as_deref().unwrap();
        assert_ne!(Some(sealed), b.sealed_private_key.as_deref(), "re-sealed");
        assert!(new.open(&a.kid, sealed).is_ok());
        let refused = old.open(&a.kid, sealed).unwrap_err().to_string();
        assert!(refused.contains("another key-encryption key"), "{refused}");
    }
    let events = app.audit().await;
    let rotated = events.iter().find(|e| e.kind == "key.rotate_kek").unwrap();
    assert_eq!(rotated.details["keys"], 2);
    assert_eq!(rotated.details["to"], new.id());

    // Instances that restart with the new KEK sign; one left on the old KEK cannot.
    let now = app.clock.now();
    let fresh = KeyRing::new(Vault::new(&app.data_dir(), Some(&new_file)).unwrap());
    assert!(
        fresh
            .reload(app.state.store.as_ref(), now)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(fresh.current().signer(now).is_some());
    let stale = KeyRing::new(Vault::new(&app.data_dir(), Some(&old_file)).unwrap());
    let problems = stale.reload(app.state.store.as_ref(), now).await.unwrap();
    assert!(!problems.is_empty());
    assert!(stale.current().signer(now).is_none());

    // The old KEK no longer rotates anything, and a KEK cannot be rotated onto itself.
    let again = run_keys(&args, rotate(new_file.clone()), now).await;
    assert!(
        again.is_err(),
        "the store's keys are no longer under the old KEK"
    );
    let new_args = agentkeys_broker::cli::StoreArgs {
        key_encryption_key_file: Some(new_file.clone()),
        ..args.clone()
    };
    let same = run_keys(&new_args, rotate(new_file), now)
        .await
        .unwrap_err();
    assert!(same.to_string().contains("the one in use"), "{same}");
    drop((keks, new_dir));
}
