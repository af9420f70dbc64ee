"""Surface: placements, business rules, frequency caps, slate assembly and fallbacks (`serving/`), impression logging,
live updates over WebSockets, the demo storefront.
"""
