"""Response and request bodies (they also shape the OpenAPI schema scanners read)."""

from pydantic import BaseModel, Field


class Item(BaseModel):
    id: int
    name: str
    category: str
    price_cents: int
    stock: int


class Category(BaseModel):
    slug: str
    title: str


class User(BaseModel):
    id: int
    username: str
    email: str
    role: str


class Order(BaseModel):
    id: int
    item_id: int
    item_name: str
    quantity: int
    total_cents: int


class Restock(BaseModel):
    quantity: int = Field(gt=0, le=10_000)


class Health(BaseModel):
    status: str
    version: str
