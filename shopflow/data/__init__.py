"""The shop's data: the contract every source is turned into, the adapters (`sources`), the
embedded simulator (`synthetic`), privacy at the door, the validation rules, and the text
every model reads."""
