//! The configuration's names, defaults and refusals.

use kiln_autoregressive::{PixelCnnConfig, PixelCnnTrainer, PixelLikelihood};
use kiln_tensor::Device;

#[test]
fn likelihoods_have_kebab_case_names_in_code_and_json() {
    for likelihood in PixelLikelihood::ALL {
        assert_eq!(
            PixelLikelihood::from_name(likelihood.name()),
            Some(likelihood)
        );
        let json = serde_json::to_string(&likelihood).unwrap();
        assert_eq!(json, format!("\"{}\"", likelihood.name()));
    }
    assert_eq!(PixelLikelihood::Bernoulli.name(), "bernoulli");
    assert_eq!(PixelLikelihood::Categorical.name(), "categorical");
    assert_eq!(PixelLikelihood::from_name("gaussian"), None);
    let config = PixelCnnConfig::new();
    let back: PixelCnnConfig =
        serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
    assert_eq!(back, config);
    assert!(config.validate().is_ok());
}

#[test]
fn impossible_settings_are_refused_with_one_line() {
    let with = |change: &dyn Fn(&mut PixelCnnConfig)| {
        let mut config = PixelCnnConfig::new();
        change(&mut config);
        config
    };
    let cases = [
        (with(&|c| c.hidden_channels = 0), "hidden channels"),
        (with(&|c| c.hidden_channels = 63), "got 63"),
        (with(&|c| c.batch_size = 0), "batch size"),
        (with(&|c| c.lr = 0.0), "learning rate"),
        (with(&|c| c.lr = f64::NAN), "learning rate"),
    ];
    for (config, expected) in cases {
        let message = config.validate().unwrap_err();
        assert!(
            message.contains(expected) && !message.contains('\n'),
            "{message}"
        );
        let error = PixelCnnTrainer::new(config, Device::Cpu).err().unwrap();
        assert_eq!(error.to_string(), format!("PixelCNN config: {message}"));
    }
}
