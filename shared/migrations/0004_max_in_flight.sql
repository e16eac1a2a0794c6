-- A cap on the requests one subscription has in flight to its endpoint at once.
-- NULL means "the server's default" (ANIKA_SUBSCRIPTION_MAX_IN_FLIGHT), so a
-- change of the default reaches every subscription that did not choose one.
ALTER TABLE subscriptions
    ADD COLUMN max_in_flight integer CHECK (max_in_flight BETWEEN 1 AND 1000);
