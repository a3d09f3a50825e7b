// Permanent storage: wallets, ANS-104 data items, the store (embedded SQLite or an Arweave
// gateway), the gateway HTTP server, and models published as chunk items.
export { b64url, generateWallet, ownerAddress, ownerKey, readWallet, walletAddress, walletSigner, writeWallet, WalletError, type Wallet, type WalletType } from './wallet.js';
export { ItemError, TAG_LIMITS, createItem, parseItem, tagProblem, tagValue, verifyItem, type Item, type ItemOptions, type Tag } from './items.js';
export { MAX_PAGE, QueryError, checkQuery, type ItemSummary, type PutResult, type Store, type TransactionsPage, type TransactionsQuery } from './store.js';
export { openSqliteStore } from './sqlite-store.js';
export { openArweaveStore } from './arweave-store.js';
export { GatewayError, openGatewayStore } from './gateway-store.js';
export { createGateway, startGateway } from './gateway.js';
export { executeGraphql } from './graphql.js';
export { MANIFEST_VERSION, MAX_CHUNK_ITEM_BYTES, ModelStoreError, fetchModel, listModels, publishModel, readModelHeader, type Manifest, type ModelHeader, type PublishResult } from './models.js';
