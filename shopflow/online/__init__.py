"""Online experiments on live traffic: what the service shows and logs (impressions), what
shoppers do with it (events), how traffic is split between the champion and a challenger,
and the always-valid test that decides between them."""
