//! The dealer–bank flow: a car dealer, a bank and an insurer, each a partner of its own.
//!
//! The dealer publishes `car.chosen` (customer, car, price) and grants it to the bank and
//! the insurer. The bank receives each by webhook and answers with a loan offer in its own
//! topic `loan.offered`, granted back to the dealer, who shows it. The insurer reads only
//! the dealer's topic and quotes insurance; anika refuses it the bank's offers.

use std::{sync::Arc, sync::Mutex, time::Duration};

use serde_json::json;

use crate::{
    Error, Say, Target,
    receiver::{Delivery, Handled, Handler, Receiver},
    setup::{Operator, Partner, Topic},
    wait_until,
};

/// The cars customers choose in the example: (customer, car, price in euros).
pub const CARS: [(&str, &str, u32); 3] = [
    ("Ada Lovelace", "Volvo EX30", 36_000),
    ("Alan Turing", "Škoda Octavia", 29_500),
    ("Grace Hopper", "Renault 5 E-Tech", 27_900),
];

/// The loan the bank offers: 48 monthly instalments at 4.9 % a year.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoanOffer {
    /// Number of monthly instalments.
    pub months: u32,
    /// Yearly interest in tenths of a percent.
    pub rate_permille: u32,
    /// Each instalment, in cents.
    pub monthly_cents: u64,
}

/// The bank's decision for a car of `price_eur`: an annuity over 48 months at 4.9 %.
pub fn loan_offer(price_eur: u32) -> LoanOffer {
    let (months, rate_permille) = (48, 49);
    let r = f64::from(rate_permille) / 1000.0 / 12.0;
    let monthly = f64::from(price_eur) * r / (1.0 - (1.0 + r).powi(-(months as i32)));
    LoanOffer {
        months,
        rate_permille,
        monthly_cents: (monthly * 100.0).round() as u64,
    }
}

/// The insurer's yearly premium for a car of `price_eur`: 3.5 % of the price, at least 400 €.
pub fn insurance_premium_eur(price_eur: u32) -> u32 {
    (price_eur * 35 / 1000).max(400)
}

/// Cents as euros, e.g. `827.13 €`.
pub fn euros(cents: u64) -> String {
    format!("{}.{:02} €", cents / 100, cents % 100)
}

/// A car the dealer published.
#[derive(Clone, Debug)]
pub struct ChosenCar {
    /// The `car.chosen` event's id.
    pub event_id: String,
    /// Who chose it.
    pub customer: String,
}

/// Something a partner saw about one chosen car.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The `car.chosen` event it answers.
    pub car_event_id: String,
    /// The topic it arrived on.
    pub topic: String,
    /// The customer.
    pub customer: String,
    /// The offer or quote, as shown.
    pub text: String,
}

/// What the run ended with.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The cars the dealer published.
    pub cars: Vec<ChosenCar>,
    /// The loan offers the dealer received.
    pub dealer_saw: Vec<Seen>,
    /// The insurance quotes the insurer made, one per car it received.
    pub insurer_saw: Vec<Seen>,
    /// The names of the other partners' topics the insurer may read.
    pub insurer_topics: Vec<String>,
    /// The status anika answered when the insurer tried to subscribe to `loan.offered`
    /// (`None` if it was allowed, which would be a bug).
    pub insurer_refused_with: Option<u16>,
}

/// The bank: answers each chosen car with a loan offer in its own topic.
struct Bank {
    partner: Arc<Partner>,
    offers: Topic,
    say: Say,
}

impl Handler for Bank {
    async fn handle(&self, _hook: &str, car: Delivery) -> Result<Handled, Error> {
        let price = car.data["price_eur"].as_u64().unwrap_or_default() as u32;
        let offer = loan_offer(price);
        let customer = car.data["customer"].as_str().unwrap_or_default();
        let data = json!({
            "car_event_id": car.id,
            "customer": customer,
            "car": car.data["car"],
            "months": offer.months,
            "rate_percent": f64::from(offer.rate_permille) / 10.0,
            "monthly_cents": offer.monthly_cents,
        });
        // A redelivered car.chosen publishes the same offer again: the idempotency key
        // makes anika answer with the first offer instead of a second one.
        self.partner
            .publisher
            .publish(&self.offers.id, data, &format!("offer-for-{}", car.id))
            .await?;
        self.say.line(format!(
            "[bank]    {customer}: car.chosen received → loan.offered {} × {}",
            offer.months,
            euros(offer.monthly_cents)
        ));
        Ok(Handled::Applied)
    }
}

/// The dealer or the insurer: remembers what it saw and says it.
struct Shows {
    who: &'static str,
    seen: Mutex<Vec<Seen>>,
    say: Say,
}

impl Handler for Shows {
    async fn handle(&self, _hook: &str, event: Delivery) -> Result<Handled, Error> {
        let customer = event.data["customer"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let (car_event_id, text) = if self.who == "insurer" {
            let price = event.data["price_eur"].as_u64().unwrap_or_default() as u32;
            let premium = insurance_premium_eur(price);
            (event.id.clone(), format!("insurance {premium} € a year"))
        } else {
            let monthly = event.data["monthly_cents"].as_u64().unwrap_or_default();
            let months = event.data["months"].as_u64().unwrap_or_default();
            (
                event.data["car_event_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                format!("loan {months} × {}", euros(monthly)),
            )
        };
        let who = format!("[{}]", self.who);
        self.say.line(format!(
            "{who:<10}{customer}: {} received → {text}",
            event.topic
        ));
        self.seen.lock().expect("seen lock").push(Seen {
            car_event_id,
            topic: event.topic,
            customer,
            text,
        });
        Ok(Handled::Applied)
    }
}

impl Shows {
    fn new(who: &'static str, say: &Say) -> Self {
        Self {
            who,
            seen: Mutex::new(Vec::new()),
            say: say.clone(),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }
}

/// Runs the flow against `target` and returns what each partner saw.
pub async fn run(target: &Target, say: &Say) -> Result<Outcome, Error> {
    let operator = Operator::new(target)?;
    let tag = crate::run_tag();
    say.line(format!(
        "Setting up three partners (run {tag}), each with its own API keys"
    ));
    let dealer = operator.partner(&format!("dealer-{tag}")).await?;
    let bank = Arc::new(operator.partner(&format!("bank-{tag}")).await?);
    let insurer = operator.partner(&format!("insurer-{tag}")).await?;

    let cars = dealer.topic("car.chosen", "A customer chose a car").await?;
    let offers = bank.topic("loan.offered", "The bank's loan offers").await?;
    dealer.grant(&cars, &bank).await?;
    dealer.grant(&cars, &insurer).await?;
    bank.grant(&offers, &dealer).await?;
    say.line("  dealer: topic car.chosen, granted to bank and insurer");
    say.line("  bank:   topic loan.offered, granted to dealer");

    let mut bank_hooks = Receiver::start(Bank {
        partner: Arc::clone(&bank),
        offers: offers.clone(),
        say: say.clone(),
    })
    .await?;
    let mut dealer_hooks = Receiver::start(Shows::new("dealer", say)).await?;
    let mut insurer_hooks = Receiver::start(Shows::new("insurer", say)).await?;
    bank.subscribe(&cars, &bank_hooks, "car-chosen").await?;
    insurer
        .subscribe(&cars, &insurer_hooks, "car-chosen")
        .await?;
    dealer
        .subscribe(&offers, &dealer_hooks, "loan-offered")
        .await?;

    // The insurer was granted only the dealer's topic: anika does not let it near the offers.
    let insurer_refused_with = match insurer
        .create_subscription(&offers.id, &insurer_hooks.url("loan-offered"))
        .await
    {
        Ok(_) => None,
        Err(Error::Api(error)) => error.status().map(|s| s.as_u16()),
        Err(other) => return Err(other),
    };
    let insurer_topics = insurer.granted_topic_names().await?;
    say.line(format!(
        "  insurer: may read {insurer_topics:?}; subscribing to loan.offered was refused ({})",
        insurer_refused_with.map_or("not refused!".to_owned(), |s| s.to_string())
    ));

    let mut chosen = Vec::new();
    for (customer, car, price_eur) in CARS {
        let data = json!({"customer": customer, "car": car, "price_eur": price_eur});
        let event_id = dealer
            .publisher
            .publish(&cars.id, data, &format!("{tag}-{customer}"))
            .await?;
        say.line(format!(
            "[dealer]  {customer} chose a {car} for {price_eur} € → car.chosen"
        ));
        chosen.push(ChosenCar {
            event_id,
            customer: customer.to_owned(),
        });
    }

    wait_until(
        "the dealer's offers and the insurer's quotes",
        Duration::from_secs(60),
        async || {
            let done = dealer_hooks.handler().seen().len() >= chosen.len()
                && insurer_hooks.handler().seen().len() >= chosen.len();
            Ok(done.then_some(()))
        },
    )
    .await?;
    let outcome = Outcome {
        cars: chosen,
        dealer_saw: dealer_hooks.handler().seen(),
        insurer_saw: insurer_hooks.handler().seen(),
        insurer_topics,
        insurer_refused_with,
    };
    let counts = [
        bank_hooks.counts(),
        dealer_hooks.counts(),
        insurer_hooks.counts(),
    ];
    say.line(format!(
        "Done: {} cars chosen, {} loan offers shown by the dealer, {} insurance quotes. \
         Every delivery's signature was verified ({} refused), {} repeated deliveries dropped.",
        outcome.cars.len(),
        outcome.dealer_saw.len(),
        outcome.insurer_saw.len(),
        counts.iter().map(|c| c.bad_signatures).sum::<u64>(),
        counts.iter().map(|c| c.duplicates).sum::<u64>(),
    ));
    for receiver in [&mut dealer_hooks, &mut insurer_hooks] {
        receiver.stop().await;
    }
    bank_hooks.stop().await;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loan_of_36000_euros_over_48_months_at_4_9_percent_costs_827_a_month() {
        let offer = loan_offer(36_000);
        assert_eq!((offer.months, offer.rate_permille), (48, 49));
        assert_eq!(euros(offer.monthly_cents), "827.42 €");
    }

    #[test]
    fn insurance_is_three_and_a_half_percent_of_the_price_but_at_least_400_euros() {
        assert_eq!(insurance_premium_eur(36_000), 1_260);
        assert_eq!(insurance_premium_eur(5_000), 400);
    }
}
