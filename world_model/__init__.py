"""The world model: RSSM, encoder, decoder, heads, and the sequential ELBO."""
